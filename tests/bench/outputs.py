"""Bytes and milliseconds per result format, and the cost of refined edges (not collected by pytest).

    .venv/bin/python tests/bench/outputs.py [--model u2net] [--runs 5]

For each test photo (tests/fixtures/photos/*.jpg) the model's mask is computed once, then the
worker's own encoder (`images.encode_cutout`) writes the cut-out as png, webp and jpeg
(`--runs` times each; the median is printed) beside the input's size.  Then each photo is
refined by `refine=matting` and `refine=decontaminate` in a fresh process (`--runs` / 2 times,
the median printed), which prints ms per megapixel and its peak memory (VmHWM) above what it held before refining.  The
first run of pymatting compiles with numba; that is the install step's job, so a warm-up
on a small image comes first and is not counted.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT)]

from maskflow.infra.domain.images import decode_image, encode_cutout  # noqa: E402
from maskflow.infra.domain.options import parse  # noqa: E402
from maskflow.infra.domain.segmenter import Segmenter  # noqa: E402
from maskflow.infra.wiring.config import load_config  # noqa: E402

PHOTOS = sorted((ROOT / "tests" / "fixtures" / "photos").glob("*.jpg"))
FORMATS = ("png", "webp", "jpeg")

REFINE_ONE = r"""
import json, sys, time
import numpy as np
sys.path[:0] = [sys.argv[1]]
from maskflow.infra.domain.options import parse
from maskflow.infra.domain.refine import finish

def peak_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

refine, pixels = sys.argv[2], np.load(sys.argv[3])
rgb, mask = np.ascontiguousarray(pixels[:, :, :3]), np.ascontiguousarray(pixels[:, :, 3])
step = max(1, max(mask.shape) // 64)  # the whole photo, small: its edges give matting work
finish(np.ascontiguousarray(rgb[::step, ::step]), np.ascontiguousarray(mask[::step, ::step]),
       parse({"refine": refine}), 10**9)  # loading numba's compiled code, not counted
before, times = peak_kb(), []
for _ in range(int(sys.argv[4])):
    start = time.perf_counter()
    finish(rgb, mask, parse({"refine": refine}), 10**9)
    times.append((time.perf_counter() - start) * 1000)
print(json.dumps({"ms": sorted(times)[len(times) // 2], "extra_mb": (peak_kb() - before) / 1024,
                  "peak_mb": peak_kb() / 1024}))
"""


def encode_table(model: Segmenter, runs: int) -> list[dict]:
    rows = []
    for photo in PHOTOS:
        data = photo.read_bytes()
        rgb = decode_image(data)
        mask = model.predict(rgb)
        row = {"photo": photo.name, "size": f"{rgb.shape[1]}x{rgb.shape[0]}", "input_bytes": len(data),
               "rgb": rgb, "mask": mask}
        for fmt in FORMATS:
            options, times = parse({"format": fmt}), []
            for _ in range(runs):
                start = time.perf_counter()
                out = encode_cutout(rgb, mask, options)
                times.append((time.perf_counter() - start) * 1000)
            row[fmt] = (len(out), statistics.median(times))
        rows.append(row)
    return rows


def refine_cost(rgb: np.ndarray, mask: np.ndarray, refine: str, scratch: Path, runs: int) -> dict:
    pixels = scratch / "pixels.npy"
    np.save(pixels, np.dstack([rgb, mask]))
    out = subprocess.run([sys.executable, "-c", REFINE_ONE, str(ROOT), refine, str(pixels), str(runs)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="u2net", help="whose masks to encode (default: the drop-in's)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    file = load_config(env={}).model_files[args.model]
    model = Segmenter.load(file.path, file.input_size, manifest_path=file.manifest)
    rows = encode_table(model, args.runs)

    print(f"model {args.model}; median of {args.runs} encodes; bytes (ms)")
    print(f"{'photo':16} {'size':>9} {'input':>9} " + " ".join(f"{f:>17}" for f in FORMATS))
    for row in rows:
        cells = " ".join(f"{row[f][0]:>9} ({row[f][1]:5.1f})" for f in FORMATS)
        print(f"{row['photo']:16} {row['size']:>9} {row['input_bytes']:>9} {cells}")
    totals = {f: (sum(r[f][0] for r in rows), sum(r[f][1] for r in rows)) for f in FORMATS}
    inputs = sum(r["input_bytes"] for r in rows)
    print(f"{'all':16} {'':>9} {inputs:>9} " + " ".join(f"{b:>9} ({ms:5.1f})" for b, ms in totals.values()))
    print("size against the input: " + ", ".join(f"{f} {totals[f][0] / inputs:.2f}x" for f in FORMATS))

    # and one photo scaled up to outputs.refine_max_pixels, the largest a task may refine
    big = rows[0]
    side = int(load_config(env={}).outputs.refine_max_pixels ** 0.5)
    largest = {"photo": f"{big['photo']} scaled", "size": f"{side}x{side}",
               "rgb": cv2.resize(big["rgb"], (side, side), interpolation=cv2.INTER_CUBIC),
               "mask": cv2.resize(big["mask"], (side, side), interpolation=cv2.INTER_CUBIC)}
    with tempfile.TemporaryDirectory() as scratch:
        for refine in ("matting", "decontaminate"):
            for row in [*rows, largest]:
                cost = refine_cost(row["rgb"], row["mask"], refine, Path(scratch), max(1, args.runs // 2))
                megapixels = row["rgb"].shape[0] * row["rgb"].shape[1] / 1e6
                print(f"refine={refine:13} {row['photo']:22} {row['size']:>9} {cost['ms']:8.0f} ms "
                      f"{cost['ms'] / megapixels:6.0f} ms/MP  +{cost['extra_mb']:.0f} MB "
                      f"(process peak {cost['peak_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
