"""The mask PNG: size against time for each encoder setting, on the `person` model's real masks.

Masks of make_photo photos (tests/checks.py) at each size asked; every setting's output is
decoded again and must give the same pixels.  The row `served` is encode_mask_png as the
worker calls it (ISA-L when installed).  Not collected by pytest.

    .venv/bin/python tests/bench/mask_png.py
    .venv/bin/python tests/bench/mask_png.py --sizes 256x192,1024x768,2400x1600 --photos 6
"""
from __future__ import annotations

import argparse
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from checks import make_photo  # noqa: E402
from maskflow.infra.domain import images  # noqa: E402
from maskflow.infra.domain.images import decode_image, encode_mask_png  # noqa: E402
from maskflow.infra.domain.segmenter import Segmenter  # noqa: E402

P, S, F = cv2.IMWRITE_PNG_COMPRESSION, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_FILTER
OPENCV = {
    "opencv default": [],
    "opencv L1 RLE Paeth (before)": images.PNG_PARAMS,
    "opencv L1 RLE Up (fallback)": images.MASK_PNG_PARAMS,
    "opencv L1 RLE Sub": [P, 1, S, cv2.IMWRITE_PNG_STRATEGY_RLE, F, cv2.IMWRITE_PNG_FILTER_SUB],
    "opencv L1 RLE none": [P, 1, S, cv2.IMWRITE_PNG_STRATEGY_RLE, F, cv2.IMWRITE_PNG_FILTER_NONE],
    "opencv L1 filtered Up": [P, 1, S, cv2.IMWRITE_PNG_STRATEGY_FILTERED, F, cv2.IMWRITE_PNG_FILTER_UP],
    "opencv L1 Huffman only Up": [P, 1, S, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY, F, cv2.IMWRITE_PNG_FILTER_UP],
    "opencv L0 stored": [P, 0],
}


def up_rows(mask: np.ndarray) -> np.ndarray:
    rows = np.empty((mask.shape[0], mask.shape[1] + 1), np.uint8)
    rows[:, 0] = 2
    rows[0, 1:] = mask[0]
    np.subtract(mask[1:], mask[:-1], out=rows[1:, 1:])
    return rows


def with_deflate(compress):
    """A PNG writer like encode_mask_png's, with another deflate."""
    def encode(mask: np.ndarray) -> bytes:
        h, w = mask.shape
        header = images.struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
        return b"".join((images.PNG_SIGNATURE, images._png_chunk(b"IHDR", header),
                         images._png_chunk(b"IDAT", compress(up_rows(mask))), images._png_chunk(b"IEND", b"")))
    return encode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024x768,256x192,2400x1800")
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    seg = Segmenter.load(ROOT / "models" / "segmentation.onnx")
    encoders = {"served": encode_mask_png}
    encoders.update({name: (lambda p: lambda m: encode_mask_png(m, p))(p) for name, p in OPENCV.items()})
    for level in (1, 6):
        encoders[f"stdlib zlib L{level} RLE Up"] = with_deflate(
            (lambda lv: lambda b: (lambda c: c.compress(b) + c.flush())(
                zlib.compressobj(lv, zlib.DEFLATED, 15, 9, zlib.Z_RLE)))(level))
    if images.isal_zlib is not None:
        for level in (0, 1, 2, 3):
            encoders[f"ISA-L L{level} Up"] = with_deflate((lambda lv: lambda b: images.isal_zlib.compress(b, lv))(level))
    print(f"served by: {'ISA-L level 1, Up filter' if images.isal_zlib else 'OpenCV (isal not installed)'}; "
          f"best of {args.repeat}, ms and KB per mask")
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        masks = [seg.predict(decode_image(make_photo(i, w, h, quality=90))) for i in range(args.photos)]
        print(f"\n{size}, {len(masks)} masks of the `person` model")
        rows = []
        for name, encode in encoders.items():
            for mask in masks:
                back = cv2.imdecode(np.frombuffer(encode(mask), np.uint8), cv2.IMREAD_UNCHANGED)
                assert np.array_equal(back, mask), f"{name}: decoded pixels differ"
            best = float("inf")
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                out = [encode(m) for m in masks]
                best = min(best, time.perf_counter() - t0)
            rows.append((1000 * best / len(masks), sum(map(len, out)) / len(masks) / 1024, name))
        for ms, kb, name in sorted(rows):
            print(f"  {ms:7.2f} ms  {kb:8.1f} KB  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
