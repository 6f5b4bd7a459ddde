"""The models maskflow serves, by stable name, and how a task's model is chosen: the only list.

The API lists and validates names from here without loading anything (it has no model
runtime); the config finds each entry's file (`Config.model_files`), workers load them, and
the CLI, the web page and the OpenAPI document offer the names.  Adding a model is one
`register(ModelEntry(...))` here plus its ONNX file and manifest in models/.  A task names its model
in the object's user metadata (``x-amz-meta-model``: the API sets it, ``mc cp --attr`` and any
S3 SDK can); failing that, ``models.by_prefix`` maps key prefixes to names; failing that, the
task gets ``person``, which is what maskflow did before models had names.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

PERSON = "person"
GENERAL = "general"
DEFAULT = PERSON
# S3 user metadata key; travels as the header x-amz-meta-model.
METADATA_KEY = "model"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    model_file: str        # in models/, with its manifest beside it (same stem, .json)
    input_size: tuple[int, int]  # width, height
    good_for: str
    license: str
    source: str


CATALOG: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    """Add a model to the catalogue; its name must be new."""
    if entry.name in CATALOG:
        raise ValueError(f"model {entry.name!r} is in the catalogue already")
    CATALOG[entry.name] = entry
    return entry


def names() -> tuple[str, ...]:
    """Every name a task may ask for, the default first."""
    return tuple(CATALOG)


for _entry in (
    ModelEntry(PERSON, "segmentation.onnx", (256, 256),
               "people: portraits, selfies, video-call framing; fast (about 5 ms of one core per image)",
               "Apache-2.0",
               "MediaPipe selfie segmentation (general, 256x256), converted to ONNX by "
               "models/build_segmentation.py"),
    ModelEntry(GENERAL, "u2netp.onnx", (320, 320),
               "any salient object: products, animals, things on a plain background; "
               "slow (about 0.6 s of one core per image)",
               "Apache-2.0",
               "U^2-Net-p (Qin et al. 2020), the ONNX export rembg distributes"),
):
    register(_entry)


class UnknownModel(ValueError):
    """A task asked for a model this deployment does not serve."""


def check_name(name: str) -> str:
    if name not in CATALOG:
        shown = name if len(name) <= 40 else name[:37] + "..."
        raise UnknownModel(f"unknown model {shown!r}; valid models: {', '.join(names())}")
    return name


def named_model(requested: str, input_key: str, by_prefix: Mapping[str, str]) -> str:
    """The model a task names: the object's own request, else the longest matching prefix;
    '' when it names none (it then gets DEFAULT, and its record keeps the original contract's
    shape).  A name that is not served raises UnknownModel."""
    if requested:
        return check_name(requested)
    matches = [prefix for prefix in by_prefix if input_key.startswith(prefix)]
    return check_name(by_prefix[max(matches, key=len)]) if matches else ""
