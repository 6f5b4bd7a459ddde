"""In-process benchmark of the image + model path (not collected by pytest).

    .venv/bin/python tests/bench/model.py [--model models/segmentation.onnx] [--repeat 20]

Prints ms per image for decode, preprocess, inference (batch 1 and 8, 1 and 2
intra-op threads), postprocess and each PNG encode (several encoder settings),
and images/s for the whole decode -> predict -> encode loop.  Inputs: a
1024x768 JPEG made from a fixture photo, and the 512x512 sample photos.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from checks import make_photo  # noqa: E402
from maskflow.functions.worker import reuse_freed_buffers  # noqa: E402
from maskflow.infra.domain import images  # noqa: E402
from maskflow.infra.domain.images import decode_image, encode_cutout_png, encode_mask_png  # noqa: E402
from maskflow.infra.domain.segmenter import Segmenter  # noqa: E402

PHOTOS = os.path.join(ROOT, "tests", "fixtures", "photos")


def timeit(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def inputs() -> dict[str, bytes]:
    with open(os.path.join(PHOTOS, "astronaut.jpg"), "rb") as f:
        astro = f.read()
    with open(os.path.join(PHOTOS, "camera_gray.png"), "rb") as f:
        camera = f.read()
    # 1024x768 JPEG: a fixture photo upscaled, so it has real image content
    big = make_photo(source="coffee.jpg", width=1024, height=768, quality=90)
    return {"1024x768.jpg": big, "astronaut 512x512.jpg": astro, "camera 512x512 gray.png": camera}


PNG_SETTINGS = {
    "l1 rle paeth (ours)": images.PNG_PARAMS,
    "opencv default": [],
    "l0 stored": [cv2.IMWRITE_PNG_COMPRESSION, 0],
    "l1 rle up": [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
                  cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP],
    "l1 default": [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_DEFAULT],
    "l3 default": [cv2.IMWRITE_PNG_COMPRESSION, 3, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_DEFAULT],
    "l6 default": [cv2.IMWRITE_PNG_COMPRESSION, 6, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_DEFAULT],
    "l9 default": [cv2.IMWRITE_PNG_COMPRESSION, 9, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_DEFAULT],
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "segmentation.onnx"))
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args(argv)
    reuse_freed_buffers()  # as a worker process does, so the in-process figure is a fair limit
    r = args.repeat
    print(f"model {os.path.relpath(args.model, ROOT)}, median of {r} runs, cpu count {os.cpu_count()}")

    segs = {t: Segmenter.load(args.model, intra_op_threads=t) for t in (1, 2)}
    seg = segs[1]
    data = inputs()
    print("\n== per image (ms) ==")
    for name, blob in data.items():
        rgb = decode_image(blob)
        x = seg.preprocess(rgb)
        raw = seg.infer(x[None])[0]
        mask = seg.postprocess(raw, rgb.shape[:2])
        print(f"-- {name} ({rgb.shape[1]}x{rgb.shape[0]}, {len(blob) // 1024} KB)")
        print(f"   decode        {timeit(lambda: decode_image(blob), r):8.2f}")
        print(f"   preprocess    {timeit(lambda: seg.preprocess(rgb), r):8.2f}")
        print(f"   postprocess   {timeit(lambda: seg.postprocess(raw, rgb.shape[:2]), r):8.2f}")
        bgra = images.cutout_rgba(rgb, mask)[:, :, [2, 1, 0, 3]]
        for label, params in PNG_SETTINGS.items():
            mt = timeit(lambda: encode_mask_png(mask, params), r)
            ct = timeit(lambda: images.encode_png_opencv(bgra, params), r)
            ms = len(encode_mask_png(mask, params)) // 1024
            cs = len(images.encode_png_opencv(bgra, params)) // 1024
            print(f"   encode {label:22s} mask {mt:7.2f} ms {ms:5d} KB | cutout {ct:7.2f} ms {cs:5d} KB")
        ct = timeit(lambda: encode_cutout_png(rgb, mask), r)
        cs = len(encode_cutout_png(rgb, mask)) // 1024
        print(f"   encode {'cut-out as served':22s} {'':22s} | cutout {ct:7.2f} ms {cs:5d} KB "
              f"({'fpng' if images.fpng else 'OpenCV'})")

    print("\n== inference only (ms per image) ==")
    x1 = seg.preprocess(decode_image(data["astronaut 512x512.jpg"]))[None]
    for threads, s in segs.items():
        for bsz in (1, 8):
            batch = np.repeat(x1, bsz, axis=0)
            ms = timeit(lambda: s.infer(batch), max(3, r // (2 if bsz > 1 else 1)))
            print(f"   threads={threads} batch={bsz}: {ms / bsz:8.2f} ms/image ({ms:.1f} ms/batch)")

    print("\n== whole loop: decode -> predict -> encode mask + cutout (1 thread) ==")
    for name, blob in data.items():
        def loop():
            rgb = decode_image(blob)
            m = seg.predict(rgb)
            encode_mask_png(m)
            encode_cutout_png(rgb, m)
        ms = timeit(loop, r)
        print(f"   {name:26s} {ms:8.2f} ms  = {1000 / ms:6.1f} images/s")
    blobs = list(data.values()) * 4

    def batched():
        rgbs = [decode_image(b) for b in blobs[:8]]
        for rgb, m in zip(rgbs, segs[2].predict_batch(rgbs)):
            encode_mask_png(m)
            encode_cutout_png(rgb, m)
    ms = timeit(batched, max(3, r // 4))
    print(f"   mixed batch of 8, 2 threads  {ms / 8:8.2f} ms/image = {8000 / ms:6.1f} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
