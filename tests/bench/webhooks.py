"""What the results stream and webhooks cost, and how soon a webhook arrives (issue 28).

Starts two private stacks side by side on free loopback ports (Redis, MinIO, the API, the
webhook dispatcher, 2 workers each; only one drains at a time, the other's workers idle on
their blocking pop):

    off  results.stream_maxlen = 0: no stream entry, no webhook (what maskflow did before)
    on   the stream on, and every task under input/hooked/ carries a callback_url
         (webhook.by_prefix) to a receiver on 127.0.0.1, allow-listed

then
    latency  on `on`, one photo at a time: task completed_at -> the webhook received, p50/p99
    drain    `--images` photos uploaded at once, `--rounds` times in turn: into `off`; into
             `on` under input/ (the stream only); into `on` under input/hooked/ (the stream
             and a webhook per task; the time runs until the last webhook is received).
             Images/s from the first upload to the last task done.  The receiver runs in
             this process, on the same 2 cores: its CPU counts against `hooks`.

    .venv/bin/python tests/bench/webhooks.py
    .venv/bin/python tests/bench/webhooks.py --latency 60 --images 200 --rounds 3

Not collected by pytest.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "bench")]

from checks import make_photo  # noqa: E402
from conftest import make_config  # noqa: E402
from pipeline import parse_iso  # noqa: E402
from receiver import receiving  # noqa: E402
from maskflow.infra.ops.stack import Stack  # noqa: E402
from maskflow.infra.stores.objects import ObjectStore  # noqa: E402
from maskflow.infra.stores.tasks import TaskStore  # noqa: E402

HOOKED = "input/hooked/"
MODES = ("off", "stream", "hooks")


def start(tmp: Path, name: str, **sections) -> tuple[Stack, ObjectStore, TaskStore]:
    cfg = make_config(tmp / name, stack={"workers": 2}, **sections)
    stack = Stack(cfg, log=lambda _msg: None)
    stack.up()
    return stack, ObjectStore(cfg), TaskStore(stack.redis_client(), cfg)


def drain(store: ObjectStore, tasks: TaskStore, prefix: str, photos: list[bytes], done) -> float:
    """Upload every photo under `prefix` at once; seconds until `done()` says all finished."""
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: store.put(f"{prefix}{item[0]:05d}.jpg", item[1], "image/jpeg"),
                      enumerate(photos)))
    while not done():
        time.sleep(0.05)  # polling the batch counters, the same for both stacks
    return time.monotonic() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=int, default=40, help="photos sent one at a time")
    ap.add_argument("--images", type=int, default=200, help="photos per drain")
    ap.add_argument("--rounds", type=int, default=3, help="drains per stack, alternated")
    args = ap.parse_args()
    photos = [make_photo(i, 1024, 768, quality=90) for i in range(args.images)]

    with tempfile.TemporaryDirectory() as tmp, receiving() as receiver:
        hooks = {"allow_hosts": ("127.0.0.1",), "allow_insecure": True, "by_prefix": {HOOKED: receiver.url}}
        off = start(Path(tmp), "off", results={"stream_maxlen": 0})
        try:
            on = start(Path(tmp), "on", webhook=hooks)
            try:
                # one at a time on an idle stack
                _stack, store, tasks = on
                delays = []
                for i in range(args.latency):
                    key = f"{HOOKED}latency/{i:05d}.jpg"
                    store.put(key, photos[i % len(photos)], "image/jpeg")
                    (got,) = receiver.wait_for(len(receiver.received) + 1, timeout=60)[-1:]
                    task = tasks.find_by_key(key)
                    assert task.status == "completed", task
                    delays.append(got.at - parse_iso(task.completed_at))

                rates: dict[str, list[float]] = {mode: [] for mode in MODES}
                for round_ in range(args.rounds):
                    for name, (_stack, store, tasks), base in (("off", off, "input/"), ("stream", on, "input/"),
                                                               ("hooks", on, HOOKED)):
                        prefix = f"{base}drain-{name}-{round_}/"
                        expected = len(receiver.received) + len(photos)

                        def done(tasks=tasks, prefix=prefix, name=name, expected=expected) -> bool:
                            summary = tasks.batch(prefix)
                            finished = summary is not None and summary.done == len(photos)
                            return finished and (name != "hooks" or len(receiver.received) >= expected)
                        rates[name].append(len(photos) / drain(store, tasks, prefix, photos, done))
                        summary = tasks.batch(prefix)
                        assert summary.counts["completed"] == len(photos), summary
            finally:
                on[0].down()
        finally:
            off[0].down()

    q = statistics.quantiles(delays, n=100, method="inclusive")
    print(f"webhook latency, completed -> received, {len(delays)} photos one at a time: "
          f"p50 {1000 * statistics.median(delays):.1f} ms, p99 {1000 * q[98]:.1f} ms, "
          f"max {1000 * max(delays):.1f} ms")
    print(f"drain of {args.images} photos 1024x768, 2 workers, {args.rounds} rounds alternated (img/s):")
    for name in MODES:
        print(f"  {name:6}  " + "  ".join(f"{r:6.1f}" for r in rates[name])
              + f"   median {statistics.median(rates[name]):.1f}")
    for name in MODES[1:]:
        ratios = [b / a for a, b in zip(rates["off"], rates[name])]
        print(f"  {name} / off, round by round: " + "  ".join(f"{r:.3f}" for r in ratios)
              + f"   median {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
