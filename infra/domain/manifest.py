"""A model's manifest: the JSON beside each ONNX file that says how to feed it and read it.

models/README.md lists the fields; `Segmenter.load` checks the manifest against the graph.
"""
from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields


class ModelError(Exception):
    """The model file, its manifest or the configuration disagree."""


LAYOUTS = ("NHWC", "NCHW")
COLOR_ORDERS = ("RGB", "BGR")
SCALINGS = ("divide_255", "divide_max")
# modnet_ref: MODNet's official rule: the shorter side to input_height (512) when both sides are
# under it or both over it, then each side down to a multiple of 32, INTER_AREA; any size fits.
RESIZES = ("warp_bilinear", "bilinear", "pil_lanczos", "modnet_ref")
OUTPUT_KINDS = ("probability",)  # one foreground channel; no shipped model needs another
OUTPUT_NORMALIZATIONS = ("none", "minmax")
# pil_lanczos and area_uint8 first truncate the output to uint8 (as rembg and MODNet do), then
# resize that; the others resize the probability and round.
OUTPUT_RESIZES = ("bilinear", "pil_lanczos", "nearest", "area_uint8")


@dataclass(frozen=True)
class ModelManifest:
    file: str
    sha256: str
    input_name: str
    layout: str                 # NHWC | NCHW
    input_height: int
    input_width: int
    color_order: str            # RGB | BGR
    scaling: str                # divide_255 | divide_max (x / max(x), as rembg)
    resize: str                 # warp_bilinear (MediaPipe) | bilinear | pil_lanczos (rembg/PIL) | modnet_ref
    output_name: str
    output_layout: str          # NHWC | NCHW
    output_kind: str            # probability (1 channel foreground)
    mean: tuple = (0.0, 0.0, 0.0)
    std: tuple = (1.0, 1.0, 1.0)
    output_normalization: str = "none"   # none | minmax (per image, as the U2-Net authors)
    output_resize: str = "bilinear"      # bilinear | pil_lanczos | nearest | area_uint8
    license: str = ""
    source: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_dict(cls, d: dict, where: str = "manifest") -> "ModelManifest":
        known = {f.name for f in fields(cls)} - {"extra"}
        missing = [f.name for f in fields(cls)
                   if f.default is MISSING and f.default_factory is MISSING and f.name not in d]
        if missing:
            raise ModelError(f"{where}: missing field(s) {', '.join(missing)}")
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("mean", "std"):
            if k in kw:
                kw[k] = tuple(kw[k])
        kw["extra"] = {k: v for k, v in d.items() if k not in known}
        try:
            m = cls(**kw)
        except TypeError as exc:
            raise ModelError(f"{where}: {exc}") from exc
        m._validate(where)
        return m

    @classmethod
    def from_json(cls, path: str) -> "ModelManifest":
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise ModelError(f"{path}: model manifest not found (expected beside the model)") from None
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path}: cannot read manifest: {exc}") from exc
        if not isinstance(d, dict):
            raise ModelError(f"{path}: manifest must be a JSON object")
        return cls.from_dict(d, path)

    def _validate(self, where: str) -> None:
        def check(name, value, allowed):
            if value not in allowed:
                raise ModelError(f"{where}: {name}={value!r}, expected one of {', '.join(allowed)}")
        check("layout", self.layout, LAYOUTS)
        check("output_layout", self.output_layout, LAYOUTS)
        check("color_order", self.color_order, COLOR_ORDERS)
        check("scaling", self.scaling, SCALINGS)
        check("resize", self.resize, RESIZES)
        check("output_kind", self.output_kind, OUTPUT_KINDS)
        check("output_normalization", self.output_normalization, OUTPUT_NORMALIZATIONS)
        check("output_resize", self.output_resize, OUTPUT_RESIZES)
        if len(self.mean) != 3 or len(self.std) != 3 or any(s == 0 for s in self.std):
            raise ModelError(f"{where}: mean/std need 3 values, std non-zero")
        if self.input_height <= 0 or self.input_width <= 0:
            raise ModelError(f"{where}: input size must be positive")
