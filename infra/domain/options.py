"""What a task asks of its results: format, background, crop, refined edges, post-processing.

The only list of the options.  Each one travels with the object as its user metadata
``x-amz-meta-<name>`` (names spelled with hyphens there, ``crop-margin``), which is how the
API's form fields, a presigned upload's binding, ``mc cp --attr`` and any S3 SDK set it; the
worker reads them from the event.  `parse` checks every value and every combination and
names each problem; an unknown metadata key is someone else's and is left alone.

    format        png (default) | webp (lossless, with alpha) | jpeg
    background    #RRGGBB: composite onto this colour, no alpha (jpeg without one: white)
    crop          true | false: the cut-out cropped to the mask's bounding box
    crop_margin   pixels kept around that box (0..1000), with crop=true
    refine        none (default) | matting (closed-form alpha matting from a trimap, and the
                  foreground colours re-estimated, as rembg's -a) | decontaminate (the
                  foreground colours re-estimated, the mask kept, as rembg's -dc)
    matting_foreground / matting_background / matting_erode
                  the trimap: mask >= 240 is foreground, <= 10 background, both eroded by
                  10 px (rembg's defaults), with refine=matting
    post_process  true | false: rembg's post-processed mask (opening, blur, threshold)
    premultiplied true | false: the cut-out's colours multiplied by its alpha, as rembg's plain
                  cut-outs store them (its route, /api/remove, asks for it)
"""
from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, fields

FORMATS = {"png": ("png", "image/png"), "webp": ("webp", "image/webp"), "jpeg": ("jpg", "image/jpeg")}
REFINES = ("none", "matting", "decontaminate")
_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
MAX_VALUE_CHARS = 64  # a longer value is refused before it is looked at


class BadOptions(ValueError):
    """Option values or combinations that make no sense; str() lists every reason."""

    def __init__(self, reasons: list[str]):
        super().__init__("; ".join(reasons))
        self.reasons = reasons


@dataclass(frozen=True)
class Options:
    format: str = "png"
    background: str = ""          # #rrggbb, or '' for none
    crop: bool = False
    crop_margin: int = 0
    refine: str = "none"
    matting_foreground: int = 240
    matting_background: int = 10
    matting_erode: int = 10
    post_process: bool = False
    premultiplied: bool = False

    @property
    def named(self) -> dict[str, str]:
        """The options that differ from the defaults, as their text: what a task records."""
        return {f.name: _text(getattr(self, f.name)) for f in fields(self)
                if getattr(self, f.name) != f.default}

    def texts(self, names) -> dict[str, str]:
        """These options' values as text, as an upload's metadata carries them."""
        return {name: _text(getattr(self, name)) for name in names}

    @property
    def extension(self) -> str:
        return FORMATS[self.format][0]

    @property
    def content_type(self) -> str:
        return FORMATS[self.format][1]

    @property
    def background_rgb(self) -> tuple[int, int, int] | None:
        """The colour to composite onto: `background`, or white for a JPEG, which has no alpha."""
        colour = self.background or ("#ffffff" if self.format == "jpeg" else "")
        return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5)) if colour else None  # type: ignore[return-value]


NAMES = tuple(f.name for f in fields(Options))
DEFAULTS = Options()
MATTING = ("matting_foreground", "matting_background", "matting_erode")

# Each option's texts as JSON Schema (the OpenAPI document's), and what needs what.
_BYTE = r"^(25[0-5]|2[0-4][0-9]|1?[0-9]{1,2})$"
SCHEMAS: dict[str, dict] = {
    "format": {"type": "string", "enum": list(FORMATS), "description": "the cut-out's encoding"},
    "background": {"type": "string", "pattern": r"^#[0-9a-fA-F]{6}$",
                   "description": "composite onto this colour, no alpha (jpeg without one: white)"},
    "crop": {"type": "string", "enum": ["true", "false"], "description": "crop to the mask's bounding box"},
    "crop_margin": {"type": "string", "pattern": r"^(1000|[0-9]{1,3})$",
                    "description": "pixels kept around the box (with crop=true)"},
    "refine": {"type": "string", "enum": list(REFINES),
               "description": "matting: closed-form alpha matting; decontaminate: foreground colours"},
    "matting_foreground": {"type": "string", "pattern": _BYTE, "description": "trimap: mask >= this is foreground (240)"},
    "matting_background": {"type": "string", "pattern": _BYTE, "description": "trimap: mask <= this is background (10)"},
    "matting_erode": {"type": "string", "pattern": r"^(100|[0-9]{1,2})$",
                      "description": "trimap: both regions eroded by this many pixels (10)"},
    "post_process": {"type": "string", "enum": ["true", "false"],
                     "description": "rembg's post-processed mask: opening, blur, threshold"},
    "premultiplied": {"type": "string", "enum": ["true", "false"],
                      "description": "colours multiplied by alpha, as rembg's plain cut-outs"},
}
NEEDS = {"crop_margin": ("crop", "true"), **{name: ("refine", "matting") for name in MATTING}}


def metadata_key(name: str) -> str:
    """The user-metadata name an option travels under: crop_margin -> crop-margin."""
    return name.replace("_", "-")


def metadata(options: Mapping[str, str]) -> dict[str, str]:
    """Option texts as user metadata (for a PUT, a POST policy, or an event's record)."""
    return {metadata_key(name): value for name, value in options.items()}


def from_metadata(user_metadata: Mapping[str, str]) -> dict[str, str]:
    """The options among an object's user metadata (names case-blind, as S3's); the rest ignored."""
    by_key = {metadata_key(name): name for name in NAMES}
    out = {}
    for key, value in user_metadata.items():
        name = by_key.get(key.lower().removeprefix("x-amz-meta-"))
        if name:
            out[name] = value
    return out


def parse_query(text: str) -> dict[str, str]:
    """`format=webp&crop=true`, the spelling of a per-prefix default in the config."""
    pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=True)
    return dict(pairs)


def for_task(given: Mapping[str, str], input_key: str, by_prefix: Mapping[str, str]) -> Options:
    """A task's options: the object's own, each over the longest matching prefix's default."""
    matches = [prefix for prefix in by_prefix if input_key.startswith(prefix)]
    defaults = parse_query(by_prefix[max(matches, key=len)]) if matches else {}
    return parse({**defaults, **given})


def parse(given: Mapping[str, str]) -> Options:
    """Options from their texts; BadOptions names every unknown option, bad value and
    combination that makes no sense."""
    reasons = [f"unknown option {_shown(name)} (options: {', '.join(NAMES)})" for name in given
               if name not in NAMES]
    values: dict[str, object] = {}
    for name, text in given.items():
        if name not in NAMES:
            continue
        try:
            values[name] = _value(name, text)
        except ValueError as exc:
            reasons.append(f"{name}: {exc}")
    if reasons:
        raise BadOptions(reasons)
    options = Options(**values)  # type: ignore[arg-type]
    reasons = _combinations(options, given)
    if reasons:
        raise BadOptions(reasons)
    return options


def _value(name: str, text: str) -> object:
    if not isinstance(text, str) or len(text) > MAX_VALUE_CHARS:
        raise ValueError(f"expected a short text, got {_shown(text)}")
    text = text.strip()
    if name == "format":
        if text.lower() not in FORMATS:
            raise ValueError(f"expected one of {', '.join(FORMATS)}, got {_shown(text)}")
        return text.lower()
    if name == "background":
        if not _COLOUR.fullmatch(text):
            raise ValueError(f"expected a colour #RRGGBB, got {_shown(text)}")
        return text.lower()
    if name == "refine":
        if text.lower() not in REFINES:
            raise ValueError(f"expected one of {', '.join(REFINES)}, got {_shown(text)}")
        return text.lower()
    if name in ("crop", "post_process", "premultiplied"):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {_shown(text)}")
    bounds = {"crop_margin": (0, 1000), "matting_erode": (0, 100)}.get(name, (0, 255))
    if not re.fullmatch(r"\d{1,4}", text) or not bounds[0] <= int(text) <= bounds[1]:
        raise ValueError(f"expected a whole number from {bounds[0]} to {bounds[1]}, got {_shown(text)}")
    return int(text)


def _combinations(options: Options, given: Mapping[str, str]) -> list[str]:
    return [f"{name} needs {other}={value}" for name, (other, value) in NEEDS.items()
            if name in given and _text(getattr(options, other)) != value]


def _text(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
