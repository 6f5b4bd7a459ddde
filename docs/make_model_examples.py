"""Build docs/<photo>.<model>.jpg, the README's model comparison: a person photo and a product
photo cut out by every catalogue model (the Segmenter the workers run, in this process), shown
on light grey.  The models kept outside git come from the install step's cache.

    .venv/bin/python docs/make_model_examples.py [PHOTO ...]
    (default: tests/fixtures/photos/astronaut.jpg and coffee.jpg)
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from maskflow.infra.domain.images import decode_image
from maskflow.infra.domain.segmenter import Segmenter
from maskflow.infra.wiring.config import load_config

HERE = Path(__file__).resolve().parent
PHOTOS = HERE.parent / "tests" / "fixtures" / "photos"
WIDTH, GREY = 240, 235


def main() -> None:
    photos = [Path(p) for p in sys.argv[1:]] or [PHOTOS / "astronaut.jpg", PHOTOS / "coffee.jpg"]
    for name, file in load_config(env={}).model_files.items():
        model = Segmenter.load(file.path, file.input_size, manifest_path=file.manifest)
        for photo in photos:
            rgb = decode_image(photo.read_bytes())
            alpha = model.predict(rgb)[..., None] / 255
            shown = (rgb * alpha + GREY * (1 - alpha)).astype(np.uint8)
            height = round(shown.shape[0] * WIDTH / shown.shape[1])
            shown = cv2.resize(shown, (WIDTH, height), interpolation=cv2.INTER_AREA)
            out = HERE / f"{photo.stem}.{name}.jpg"
            cv2.imwrite(str(out), cv2.cvtColor(shown, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 82])
            print(out)


if __name__ == "__main__":
    main()
