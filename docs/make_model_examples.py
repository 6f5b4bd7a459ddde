"""Build docs/<photo>.<model>.jpg, the README's model comparison: one photo cut out by each
model (the Segmenter the workers run, in this process), shown on light grey.

    .venv/bin/python docs/make_model_examples.py [PHOTO]   (default tests/fixtures/photos/coffee.jpg)
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from maskflow.infra.domain.segmenter import Segmenter
from maskflow.infra.domain.catalog import CATALOG
from maskflow.infra.domain.images import decode_image

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent / "models"
WIDTH, GREY = 360, 235


def main() -> None:
    photo = Path(sys.argv[1] if len(sys.argv) > 1 else HERE.parent / "tests" / "fixtures" / "photos" / "coffee.jpg")
    rgb = decode_image(photo.read_bytes())
    for name, entry in CATALOG.items():
        alpha = Segmenter.load(str(MODELS / entry.model_file)).predict(rgb)[..., None] / 255
        shown = (rgb * alpha + GREY * (1 - alpha)).astype(np.uint8)
        height = round(shown.shape[0] * WIDTH / shown.shape[1])
        shown = cv2.resize(shown, (WIDTH, height), interpolation=cv2.INTER_AREA)
        out = HERE / f"{photo.stem}.{name}.jpg"
        cv2.imwrite(str(out), cv2.cvtColor(shown, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 82])
        print(out)


if __name__ == "__main__":
    main()
