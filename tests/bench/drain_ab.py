"""Two settings of the stack, drained in alternation (A B, B A, A B, ...), a fresh stack per drain.

Each drain is compare.py's maskflow contestant: `mc mirror` of the same N photos into a stack
as `maskflow up` starts it, timed until the batch is done, CPU per image by process group.
B differs from A only by what is given here:

    --minio-env K=V   added to MinIO's environment (e.g. GOMAXPROCS=1)
    --env K=V         set while B's stack starts, so every process it starts inherits it
                      (but not names with the prefixes infra/ops/roles.py keeps from
                      services: MASKFLOW_, MINIO_, AWS_, REDISCLI_)

Per drain it also prints how busy the cores were (/proc/stat: busy as compare.py counts it,
idle, iowait), since on this machine a setting that lowers CPU per image can still lose
throughput to idle cores.  Alternating cancels the machine's slow drift; the pairs' wins say
how much of the difference is noise.  Use it for a lever of the drain before taking it, then
confirm with compare.py.

    .venv/bin/python tests/bench/drain_ab.py --minio-env MINIO_STORAGE_CLASS_INLINE_BLOCK=256KiB
    .venv/bin/python tests/bench/drain_ab.py --pairs 10 --env OPENCV_FOR_THREADS_NUM=1 --mix

Not collected by pytest.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "bench")]

import compare  # noqa: E402


@dataclass
class Drain:
    variant: str
    rate: float
    cpu_ms: float           # per image, every process group of the stack and mc
    by_group: str
    busy: float             # cores
    idle: float
    iowait: float


def settings(pairs: list[str], flag: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"{flag} {pair!r}: expected NAME=VALUE")
        out[name] = value
    return out


class CoreSampler:
    """/proc/stat every 50 ms, so the cores can be read over the drain alone (the run also
    waits for the pipeline to settle, with the cores mostly idle)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, list[int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), compare.cpu_ticks()))
            self._stop.wait(0.05)

    def __enter__(self) -> CoreSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def ticks(self, start: float, end: float) -> tuple[list[int], float]:
        """The ticks by field (compare.cpu_ticks) between the first and the last sample
        inside [start, end], and the seconds between those two samples."""
        inside = [(t, v) for t, v in self.samples if start <= t <= end]
        (t0, first), (t1, last) = inside[0], inside[-1]
        return [b - a for a, b in zip(first, last)], t1 - t0


def drain(variant: str, folder: Path, photos: Path, count: int, env: dict[str, str],
          minio_env: dict[str, str]) -> Drain:
    bench = compare.Bench(folder, lambda _msg: None)
    if minio_env:
        base = bench.stack.minio_env
        bench.stack.minio_env = lambda: {**base(), **minio_env}
    try:
        with mock.patch.dict(os.environ, env):
            bench.up()
        with CoreSampler() as sampler:
            started = time.perf_counter()
            run = bench.drain("maskflow", variant, photos, count, [])
    finally:
        bench.stack.down()
    ticks, seconds = sampler.ticks(started, started + run.seconds)
    one_core = compare.CLK_TCK * seconds  # ticks of one core over the window
    groups = " · ".join(f"{u.name} {1000 * u.cpu_s / count:.1f}" for u in run.usage if u.cpu_s >= 0.05)
    return Drain(variant, run.rate, run.cpu_ms(), groups, busy=compare.busy_ticks(ticks) / one_core,
                 idle=ticks[3] / one_core, iowait=ticks[4] / one_core)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=800)
    parser.add_argument("--size", help="WxH, or a comma-separated mix used in turn "
                                       "(default 1024x768; with --mix, compare.py's mix)")
    parser.add_argument("--mix", action="store_true", help="compare.py's mix: JPEG and PNG, some "
                                                           "with EXIF rotation")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--minio-env", action="append", default=[], metavar="K=V")
    parser.add_argument("--env", action="append", default=[], metavar="K=V")
    args = parser.parse_args()
    env, minio_env = settings(args.env, "--env"), settings(args.minio_env, "--minio-env")
    if not env and not minio_env:
        parser.error("B must differ from A: give --env or --minio-env")
    size = args.size or (compare.MIX_SIZES if args.mix else "1024x768")
    sizes = compare.parse_sizes(size)
    print(f"B: env {env or '-'}, MinIO env {minio_env or '-'}; {args.photos} photos of {size}"
          f"{' (mix)' if args.mix else ''}, {args.pairs} pairs", flush=True)
    drains: list[Drain] = []
    with tempfile.TemporaryDirectory(prefix="maskflow-ab-") as tmp:
        photos = Path(tmp) / "photos"
        compare.write_photos(photos, args.photos, sizes, args.mix)
        for pair in range(args.pairs):
            for variant in ("AB" if pair % 2 == 0 else "BA"):
                chosen = (env, minio_env) if variant == "B" else ({}, {})
                d = drain(variant, Path(tmp) / f"{variant}{pair}", photos, args.photos, *chosen)
                drains.append(d)
                print(f"{d.variant}  {d.rate:6.1f} img/s  {d.cpu_ms:5.1f} ms/img ({d.by_group})  "
                      f"cores busy {d.busy:.2f} idle {d.idle:.2f} iowait {d.iowait:.2f}", flush=True)
    a = [d for d in drains if d.variant == "A"]
    b = [d for d in drains if d.variant == "B"]
    for name, ds in (("A", a), ("B", b)):
        print(f"{name}: {statistics.mean(d.rate for d in ds):.1f} img/s, "
              f"{statistics.mean(d.cpu_ms for d in ds):.1f} ms/img, "
              f"busy {statistics.mean(d.busy for d in ds):.2f} cores")
    wins = sum(db.rate > da.rate for da, db in zip(a, b))
    print(f"B/A {statistics.mean(d.rate for d in b) / statistics.mean(d.rate for d in a):.3f}; "
          f"B faster in {wins} of {len(a)} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
