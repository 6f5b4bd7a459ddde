"""The handler: one object-created event in, a cut-out and a mask out.

It returns on success and raises on failure; queueing, retries, timeouts and task state are
the runtime's business (functions/runtime.py).  Result naming keeps the whole input name and
adds ``.png``, so inputs that differ only by extension never overwrite each other:

    input/b1/cat.jpg  ->  output/b1/cat.jpg.png  (RGBA cut-out)  +  masks/b1/cat.jpg.png  (mask)

Both results come from the version of the input the event names: the read is conditional on
the event's ETag, and each result is published only over results of the same or an older
version (infra/stores/objects.py), so when a key is re-uploaded mid-run the newest upload's results
win whatever order the runs finish in.  A run that loses raises ObjectChanged.
"""
from __future__ import annotations

import urllib.parse
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from maskflow.functions.events import ObjectCreated
from maskflow.infra.domain.images import decode_image, encode_cutout_png, encode_mask_png
from maskflow.infra.stores.objects import StoredObject
from maskflow.infra.stores.tasks import normalise_sequencer

INPUT_PREFIX = "input/"


class Objects(Protocol):
    def get(self, key: str, etag: str = "") -> StoredObject: ...
    def publish(self, key: str, data: bytes, content_type: str, metadata: dict[str, str],
                version: str) -> None: ...
    def publish_later(self, key: str, data: bytes, content_type: str, metadata: dict[str, str],
                      version: str) -> Future[None]: ...


class Model(Protocol):
    def predict(self, rgb: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Context:
    task_id: str
    objects: Objects
    model: Model
    max_pixels: int


@dataclass(frozen=True)
class Result:
    output_key: str
    mask_key: str


def result_keys(input_key: str) -> tuple[str, str]:
    relative = input_key[len(INPUT_PREFIX):] if input_key.startswith(INPUT_PREFIX) else input_key
    return f"output/{relative}.png", f"masks/{relative}.png"


def handle_object_created(event: ObjectCreated, ctx: Context) -> Result:
    source = ctx.objects.get(event.key, etag=event.etag)
    rgb = decode_image(source.data, ctx.max_pixels)
    mask = ctx.model.predict(rgb)
    output_key, mask_key = result_keys(event.key)
    # S3 metadata travels in HTTP headers: ASCII only, hence the quoting.
    metadata = {"task-id": ctx.task_id, "source-key": urllib.parse.quote(event.key),
                "source-etag": source.etag}
    version = normalise_sequencer(event.sequencer)
    # The larger cut-out is written while the mask is encoded and written; both are stored
    # before we return.
    cutout_written = ctx.objects.publish_later(output_key, encode_cutout_png(rgb, mask), "image/png",
                                               metadata, version)
    try:
        ctx.objects.publish(mask_key, encode_mask_png(mask), "image/png", metadata, version)
    finally:
        cutout_written.result()
    return Result(output_key, mask_key)
