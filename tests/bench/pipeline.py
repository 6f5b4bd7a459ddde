"""End-to-end throughput of the real pipeline, against the in-process physical limit.

Starts a private Redis + MinIO + N worker processes on free loopback ports, uploads
`--images` photos under input/, waits until every task is finished and prints images/s,
task latency (object stored -> task completed) and the workers' peak memory.  Then runs the same
decode -> model -> encode loop in this process, single-threaded, as the reference.

    .venv/bin/python tests/bench/pipeline.py --images 200 --workers 2 --concurrency 1
    .venv/bin/python tests/bench/pipeline.py --images 40 --model general   # U^2-Netp per task

Uses the pinned MinIO (or MASKFLOW_STACK_MINIO_BIN).  Not collected by pytest.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from checks import make_photo  # noqa: E402
from conftest import make_config  # noqa: E402
from maskflow.functions.worker import reuse_freed_buffers  # noqa: E402
from maskflow.infra.domain.catalog import DEFAULT, METADATA_KEY, names  # noqa: E402
from maskflow.infra.domain.images import decode_image, encode_cutout_png, encode_mask_png  # noqa: E402
from maskflow.infra.domain.segmenter import Segmenter  # noqa: E402
from maskflow.infra.ops.stack import Stack  # noqa: E402
from maskflow.infra.stores.objects import ObjectStore  # noqa: E402
from maskflow.infra.stores.tasks import TaskStore  # noqa: E402


def parse_iso(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """VmRSS (now) or VmHWM (peak) of a live process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=1, help="consumer threads per worker")
    ap.add_argument("--size", default="1024x768")
    ap.add_argument("--durable-only", action="store_true",
                    help="one event per upload (no fast target), to see what the duplicate costs")
    ap.add_argument("--model", choices=names(), help="name it on every upload (x-amz-meta-model); "
                                                   "default: name none, the person model runs")
    args = ap.parse_args()
    reuse_freed_buffers()  # as a worker process does, so the in-process figure is a fair limit
    width, height = (int(v) for v in args.size.split("x"))
    data = [make_photo(i, width, height, quality=90) for i in range(args.images)]

    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_config(Path(tmp), worker={"concurrency": args.concurrency},
                          **({"queue": {"fast_target_id": ""}} if args.durable_only else {}))
        stack = Stack(cfg, log=lambda _msg: None)
        stack.up(app=False)
        try:
            stack.start(*[lambda i=i: stack.worker_service(i) for i in range(args.workers)])
            store, tasks = ObjectStore(cfg), TaskStore(stack.redis_client(), cfg)
            pids = [stack.running(f"worker-{i}") for i in range(args.workers)] + [stack.running("minio")]
            cpu_before = [cpu_seconds(pid) for pid in pids]
            prefix = "input/bench/"
            started = time.monotonic()
            stored_at: dict[int, float] = {}

            def upload(i: int) -> None:
                store.put(f"{prefix}{i:05d}.jpg", data[i], "image/jpeg",
                          {METADATA_KEY: args.model} if args.model else None)
                stored_at[i] = time.time()

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(upload, range(len(data))))
            uploaded = time.monotonic() - started
            worker_pids = pids[:-1]
            rss_by_quarter = [[0.0] * len(worker_pids) for _ in range(4)]  # highest seen in each
            while True:
                summary = tasks.batch(prefix)
                quarter = min(3, 4 * (summary.done if summary else 0) // len(data))
                rss_by_quarter[quarter] = [max(seen, rss_mb(pid))
                                           for seen, pid in zip(rss_by_quarter[quarter], worker_pids)]
                if summary and summary.done == len(data):
                    break
                time.sleep(0.1)  # polling interval of the batch counters
            elapsed = time.monotonic() - started
            rss = [rss_mb(pid, "VmHWM") for pid in worker_pids]
            cpu = [cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before)]
            latencies = []
            for i in range(len(data)):
                task = tasks.find_by_key(f"{prefix}{i:05d}.jpg")
                latencies.append(parse_iso(task.completed_at) - stored_at[i])
        finally:
            stack.down()

    file = cfg.model_files[args.model or DEFAULT]
    model = Segmenter.load(file.path, file.input_size, manifest_path=file.manifest)
    loop_started = time.perf_counter()
    for blob in data[: min(50, len(data))]:
        rgb = decode_image(blob)
        mask = model.predict(rgb)
        encode_mask_png(mask)
        encode_cutout_png(rgb, mask)
    per_image = (time.perf_counter() - loop_started) / min(50, len(data))

    q = statistics.quantiles(latencies, n=20)
    print(f"images {len(data)} of {width}x{height}, model {args.model or DEFAULT}, "
          f"{args.workers} workers x {args.concurrency} threads")
    print(f"upload      {uploaded:6.2f} s ({len(data) / uploaded:6.1f} img/s into MinIO)")
    print(f"end to end  {elapsed:6.2f} s  -> {len(data) / elapsed:6.1f} img/s "
          f"(completed {summary.counts['completed']}, failed {summary.counts['failed']})")
    print(f"latency     p50 {statistics.median(latencies):.2f} s  p95 {q[18]:.2f} s  max {max(latencies):.2f} s "
          f"(object stored -> task completed; includes MinIO's 0-3 s queue_dir replay and queueing)")
    print("worker peak RSS  " + ", ".join(f"{r:.0f} MB" for r in rss))
    print("worker RSS by quarter of the drain (highest seen) " + " | ".join(
        ", ".join(f"{r:.0f}" for r in quarter) for quarter in rss_by_quarter) + " MB")
    print(f"CPU per image    workers {1000 * sum(cpu[:-1]) / len(data):.1f} ms, "
          f"MinIO {1000 * cpu[-1] / len(data):.1f} ms (until the last task finished)")
    print(f"in-process limit {1000 * per_image:.1f} ms/img = {1 / per_image:.1f} img/s on one thread "
          f"-> pipeline reaches {(len(data) / elapsed) * per_image:.2f}x of it")


if __name__ == "__main__":
    main()
