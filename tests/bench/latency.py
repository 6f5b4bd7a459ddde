"""Upload -> completed, one photo at a time on an idle stack: what a user waits for.

Starts a private stack (Redis, MinIO, API, workers; the default config) on free loopback
ports, then, at random moments, one photo at a time through each path a person uses:

    api       POST /api/v1/tasks/segmentation, then GET ?wait= (what `maskflow submit --wait` does)
    presigned POST /api/v1/uploads + POST to MinIO, then GET ?wait= (what the web page does)
    mc cp     `mc cp` (its own start-up included), then GET ?key=...&wait=

and prints p50/p90/p99/max, beside the bare processing time of the same photo in this
process (decode -> model -> both PNGs, taking its turn at the same random moments), and the
overhead = path p50 - bare p50.

    .venv/bin/python tests/bench/latency.py --rounds 60
    .venv/bin/python tests/bench/latency.py --rounds 60 --durable-only   # the fast target off
    .venv/bin/python tests/bench/latency.py --rounds 0 --once 500        # model runs per upload

--once N uploads N photos at once (both targets deliver each twice) and counts the model
runs the workers report against N: every run past N is a duplicate.

Not collected by pytest.
"""
from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from checks import pipeline_idle  # noqa: E402
from conftest import make_config  # noqa: E402
from maskflow.functions.worker import reuse_freed_buffers  # noqa: E402
from maskflow.infra.domain.catalog import DEFAULT  # noqa: E402
from maskflow.infra.domain.images import decode_image, encode_cutout_png, encode_mask_png  # noqa: E402
from maskflow.infra.domain.segmenter import Segmenter  # noqa: E402
from maskflow.infra.ops import install  # noqa: E402
from maskflow.infra.ops.processes import wait_until  # noqa: E402
from maskflow.infra.ops.stack import Stack  # noqa: E402
from maskflow.infra.sdk.client import Client  # noqa: E402
from maskflow.infra.stores.objects import ObjectStore  # noqa: E402
from maskflow.infra.stores.tasks import TaskStore  # noqa: E402
from maskflow.infra.stores.workers import worker_status  # noqa: E402

PHOTO = ROOT / "tests" / "fixtures" / "photos" / "astronaut.jpg"


def quantiles(samples: list[float]) -> str:
    ms = sorted(1000 * s for s in samples)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return f"p50 {statistics.median(ms):7.1f}  p90 {q[89]:7.1f}  p99 {q[98]:7.1f}  max {ms[-1]:7.1f} ms"


class BareProcessing:
    """decode -> model -> both PNGs of the photo in this process: what no service can beat."""

    def __init__(self, cfg):
        reuse_freed_buffers()  # as a worker process does, so the in-process figure is a fair limit
        file = cfg.model_files[DEFAULT]
        self.model = Segmenter.load(file.path, file.input_size)
        self.data = PHOTO.read_bytes()

    def __call__(self) -> float:
        started = time.perf_counter()
        rgb = decode_image(self.data)
        mask = self.model.predict(rgb)
        encode_mask_png(mask)
        encode_cutout_png(rgb, mask)
        return time.perf_counter() - started


def via_client(submit: Callable[[Path], str], client: Client, photo: Path) -> float:
    """Client.submit (the API upload) or Client.submit_presigned, then a long-poll."""
    started = time.perf_counter()
    task = client.get(submit(photo), wait=30)
    assert task["status"] == "completed", task
    return time.perf_counter() - started


def via_mc(client: Client, photo: Path, mc: list[str], bucket: str, key: str) -> float:
    started = time.perf_counter()
    subprocess.run([*mc, "cp", "--quiet", str(photo), f"local/{bucket}/{key}"], check=True,
                   capture_output=True)
    while True:  # the task exists once the first copy of the event has been taken
        task = client.find(key)
        if task is not None:
            break
        time.sleep(0.005)  # poll interval of the lookup; the result's time is what is measured
    if task["status"] not in ("completed", "failed"):
        task = client.get(task["task_id"], wait=30)
    assert task["status"] == "completed", task
    return time.perf_counter() - started


def exactly_once(stack: Stack, count: int) -> None:
    cfg, r = stack.cfg, stack.redis_client()
    store, tasks = ObjectStore(cfg), TaskStore(r, cfg)
    data = PHOTO.read_bytes()
    keys = [f"input/once/{i:04d}.jpg" for i in range(count)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: store.put(key, data, "image/jpeg"), keys))

    def settled() -> bool:
        summary = tasks.batch("input/once/")
        return summary is not None and summary.done == count and pipeline_idle(stack, r)

    wait_until(settled, "every copy of every event taken", 600)
    time.sleep(2 * cfg.worker.heartbeat)  # let each worker publish its final counters
    runs = sum(int(worker_status(r, f"worker-{i}").get("processed", 0))
               for i in range(cfg.stack.workers))
    retried = sum(tasks.find_by_key(key).attempts > 1 for key in keys)
    print(f"{count} uploads at once: {runs} model runs, {runs - count} duplicates, "
          f"{retried} tasks begun more than once")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=60, help="uploads per path")
    ap.add_argument("--durable-only", action="store_true", help="turn the fast target off")
    ap.add_argument("--once", type=int, default=0, help="then upload N photos at once and count model runs")
    args = ap.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"queue": {"fast_target_id": ""}} if args.durable_only else {}
        cfg = make_config(Path(tmp), **overrides)
        stack = Stack(cfg, log=lambda _msg: None)
        stack.up(app=True)
        try:
            client = Client(cfg.api_url)
            mc_dir = Path(tmp) / "mc"
            mc = [str(install.resolve_binary(install.MC, cfg.stack.mc_bin)), "--config-dir", str(mc_dir)]
            subprocess.run([*mc, "alias", "set", "local", f"http://{cfg.minio.endpoint}",
                            cfg.minio.access_key, cfg.minio.secret_key], check=True, capture_output=True)
            photos = []
            for i in range(args.rounds):  # distinct names, same bytes
                photo = Path(tmp) / f"photo-{i:03d}.jpg"
                photo.write_bytes(PHOTO.read_bytes())
                photos.append(photo)
            bare = BareProcessing(cfg)
            if photos:
                via_client(client.submit, client, photos[0])  # warm-up: connections, first model run
                bare()
            # The bare run takes its turn among the paths, at the same random moments, so the
            # drift of a shared machine's speed over a run moves both sides of the overhead.
            results: dict[str, list[float]] = {"bare": [], "api": [], "presigned": [], "mc cp": []}
            for i, photo in enumerate(photos):
                for path in rng.sample(list(results), len(results)):
                    time.sleep(rng.uniform(0.05, 0.3))  # random moments on an idle stack
                    if path == "bare":
                        results[path].append(bare())
                    elif path == "api":
                        results[path].append(via_client(client.submit, client, photo))
                    elif path == "presigned":
                        results[path].append(via_client(client.submit_presigned, client, photo))
                    else:
                        results[path].append(via_mc(client, photo, mc, cfg.minio.bucket,
                                                    f"input/latency/{i:03d}.jpg"))
            if args.once:
                exactly_once(stack, args.once)
        finally:
            stack.down()
    if not args.rounds:
        return
    bare = results.pop("bare")
    targets = "durable target only" if args.durable_only else "fast + durable targets"
    print(f"{args.rounds} uploads per path of {PHOTO.name}, one at a time, {targets}")
    print(f"{'bare processing':16s} {quantiles(bare)}")
    for path, samples in results.items():
        overhead = 1000 * (statistics.median(samples) - statistics.median(bare))
        print(f"{path:16s} {quantiles(samples)}   overhead p50 {overhead:6.1f} ms")


if __name__ == "__main__":
    main()
