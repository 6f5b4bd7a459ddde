"""Build docs/example.png (photo | mask | cut-out) from results the running stack produced.

    .venv/bin/maskflow submit tests/fixtures/photos/astronaut.jpg --wait --out out/
    .venv/bin/python docs/make_example.py tests/fixtures/photos/astronaut.jpg out/astronaut
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

HEIGHT = 320


def fit(img: np.ndarray) -> np.ndarray:
    return cv2.resize(img, (round(img.shape[1] * HEIGHT / img.shape[0]), HEIGHT), interpolation=cv2.INTER_AREA)


def main(photo: str, results_stem: str) -> None:
    rgb = cv2.imread(photo, cv2.IMREAD_COLOR)
    mask = cv2.imread(f"{results_stem}.mask.png", cv2.IMREAD_GRAYSCALE)
    cutout = cv2.imread(f"{results_stem}.png", cv2.IMREAD_UNCHANGED)
    # show transparency as a checkerboard
    yy, xx = np.indices(cutout.shape[:2])
    board = np.where(((yy // 16 + xx // 16) % 2)[..., None] == 0, 230, 180).astype(np.float32)
    alpha = cutout[:, :, 3:4].astype(np.float32) / 255
    composed = (cutout[:, :, :3] * alpha + board * (1 - alpha)).astype(np.uint8)
    gap = np.full((HEIGHT, 8, 3), 255, np.uint8)
    row = np.hstack([fit(rgb), gap, fit(cv2.cvtColor(mask, cv2.COLOR_GRAY2BGR)), gap, fit(composed)])
    out = Path(__file__).with_name("example.png")
    cv2.imwrite(str(out), row, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
