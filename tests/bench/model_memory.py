"""Peak memory of one model run, by ONNX Runtime setting (not collected by pytest).

Settings: graph optimisation level, memory arena and buffer reuse (the worker: all, on, off).

    .venv/bin/python tests/bench/model_memory.py [--model models/u2netp.onnx] [--runs 4] [--worker-only]
    .venv/bin/python tests/bench/model_memory.py --model ~/.cache/maskflow/models/u2net.onnx --worker-only

Each setting runs in a fresh process: load the model as the worker does, predict a
1024x768 photo `--runs` times one at a time, and print RSS after loading, peak RSS
(VmHWM) and ms per image.  It answers how low one worker's memory can go for a model,
whatever the service around it does.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ONE_SETTING = r"""
import resource, sys, time
sys.path[:0] = [sys.argv[1] + "/tests"]
from checks import make_photo
from maskflow.functions.worker import reuse_freed_buffers
from maskflow.infra.domain.segmenter import Segmenter
from maskflow.infra.domain.images import decode_image
import maskflow.infra.domain.segmenter as segmenter

reuse_freed_buffers()  # as a worker process does

model, level, arena, reuse, runs = sys.argv[2], sys.argv[3], sys.argv[4] == "on", sys.argv[5] == "on", int(sys.argv[6])
real_session = segmenter.ort.InferenceSession


def session(path, sess_options, **kwargs):  # the worker's options, with this run's two changed
    sess_options.enable_cpu_mem_arena = arena
    sess_options.enable_mem_reuse = reuse
    return real_session(path, sess_options=sess_options, **kwargs)


segmenter.ort.InferenceSession = session
rgb = decode_image(make_photo(0, 1024, 768), 40_000_000)
seg = Segmenter.load(model, optimization_level=level, manifest_path=sys.argv[7])
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
started = time.perf_counter()
for _ in range(runs):
    seg.predict(rgb)
ms = (time.perf_counter() - started) / runs * 1000
print(f"{loaded:.0f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} {ms:.0f}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(ROOT, "models", "u2netp.onnx"))
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--worker-only", action="store_true", help="only the worker's setting (all, on, off)")
    args = parser.parse_args()
    # a model kept outside git has its manifest in models/, not beside it
    stem = os.path.splitext(os.path.basename(args.model))[0]
    manifest = os.path.join(ROOT, "models", stem + ".json")
    settings = [("all", "on", "off")] if args.worker_only else [
        (level, arena, reuse) for level in ("all", "extended", "basic")
        for arena in ("on", "off") for reuse in ("on", "off")]
    print(f"{os.path.basename(args.model)}, 1024x768 photo, one run at a time, 1 intra-op thread\n")
    print("| optimisation | memory arena | buffer reuse | RSS loaded MB | peak RSS MB | ms/image |")
    print("|---|---|---|---|---|---|")
    for level, arena, reuse in settings:
        out = subprocess.run([sys.executable, "-c", ONE_SETTING, ROOT, args.model, level, arena, reuse,
                              str(args.runs), manifest], capture_output=True, text=True, check=True).stdout
        loaded, peak, ms = out.split()
        print(f"| {level} | {arena} | {reuse} | {loaded} | {peak} | {ms} |")


if __name__ == "__main__":
    main()
