"""The results a task gives, one row per kind: the only list of them.

Each row says where the result goes in the bucket, the suffix its key adds to the input's name,
its content type, the field of the API's `result` that carries its URL, and the file name
`maskflow submit --out` and `Client.download` give it.  The cut-out's suffix and type follow
the task's `format` option (infra/domain/options.py): ``output/b1/cat.jpg.webp``.  The encoder of each kind is
`images.ENCODERS[kind.name]`.  Keys keep the whole input name, so inputs that differ only by
their extension never overwrite each other::

    input/b1/cat.jpg  ->  output/b1/cat.jpg.png  (RGBA cut-out)  +  masks/b1/cat.jpg.png  (mask)

The handler writes the kinds in this order (functions/handlers.py), and a task record keeps
each key in the field ``<name>_key`` (infra/stores/tasks.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from maskflow.infra.domain.options import DEFAULTS, Options

INPUT_PREFIX = "input/"


@dataclass(frozen=True)
class ResultKind:
    name: str          # the task record's field is <name>_key
    prefix: str        # where results of this kind go in the bucket
    suffix: str        # added to the input's name below `prefix`
    content_type: str
    api_field: str     # in the `result` of GET /api/v1/tasks/{task_id}
    local_suffix: str  # what a download of it is called: <stem><local_suffix>
    what: str          # one line for people: the OpenAPI document, --help
    follows_format: bool = False  # suffix and type are the `format` option's

    def suffix_for(self, options: Options = DEFAULTS) -> str:
        return f".{options.extension}" if self.follows_format else self.suffix

    def local_suffix_for(self, options: Options = DEFAULTS) -> str:
        return self.suffix_for(options) if self.follows_format else self.local_suffix

    def key_for(self, input_key: str, options: Options = DEFAULTS) -> str:
        relative = input_key[len(INPUT_PREFIX):] if input_key.startswith(INPUT_PREFIX) else input_key
        return f"{self.prefix}{relative}{self.suffix_for(options)}"

    def content_type_for(self, options: Options = DEFAULTS) -> str:
        return options.content_type if self.follows_format else self.content_type

    @property
    def task_field(self) -> str:
        return f"{self.name}_key"


RESULT_KINDS: tuple[ResultKind, ...] = (
    ResultKind("output", "output/", ".png", "image/png", "segmented_image_url", ".png",
               "the cut-out: the photo as RGBA PNG (or the format asked), the mask as its alpha",
               follows_format=True),
    ResultKind("mask", "masks/", ".png", "image/png", "mask_image_url", ".mask.png",
               "the mask: 8-bit grayscale PNG, 255 = foreground"),
)


def result_keys(input_key: str, options: Options = DEFAULTS) -> dict[str, str]:
    """Every result's key for one input, by kind name."""
    return {kind.name: kind.key_for(input_key, options) for kind in RESULT_KINDS}
