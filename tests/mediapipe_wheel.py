"""The model converter (models/build_segmentation.py) and the mediapipe wheel it converts from.

The converter test rebuilds models/segmentation.onnx from that wheel. No test downloads it: it is
fetched once into a cache beforehand, by running this file (`bash infra/dev.sh test` does).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maskflow.infra.ops.install import cache_dir  # noqa: E402

WHEEL_DIR = cache_dir().parent / "wheels"
FETCH = ".venv/bin/python tests/mediapipe_wheel.py"


def load_converter():
    """models/build_segmentation.py as a module (the models folder is no package)."""
    spec = importlib.util.spec_from_file_location("build_segmentation",
                                                  ROOT / "models" / "build_segmentation.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look the module up while decorating
    spec.loader.exec_module(mod)
    return mod


def cached_wheel(converter) -> Path | None:
    """$MEDIAPIPE_WHEEL if it names a file, else the wheel in the cache, else None."""
    named = os.environ.get("MEDIAPIPE_WHEEL", "")
    if named and os.path.isfile(named):
        return Path(named)
    name = converter.WHEEL_SPEC.replace("==", "-")  # mediapipe==0.10.14 -> mediapipe-0.10.14
    return next(iter(sorted(WHEEL_DIR.glob(f"{name}-*.whl"))), None)


def main() -> int:
    converter = load_converter()
    if cached_wheel(converter) is None:
        WHEEL_DIR.mkdir(parents=True, exist_ok=True)
        converter.download_wheel(str(WHEEL_DIR))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
