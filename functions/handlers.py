"""The handler: one object-created event in, every result kind (infra/domain/outputs.py) out,
as the task's options ask (infra/domain/options.py).

It returns the results' keys on success and raises on failure; queueing, retries, timeouts
and task state are the steps' business (functions/steps.py).  Results are named after the
whole input name:

    input/b1/cat.jpg  ->  output/b1/cat.jpg.png  (RGBA cut-out)  +  masks/b1/cat.jpg.png  (mask)

Every result comes from the version of the input the event names: the read is conditional on
the event's ETag, and each result is published only over results of the same or an older
version (infra/stores/objects.py), so when a key is re-uploaded mid-run the newest upload's
results win whatever order the runs finish in.  A run that loses raises ObjectChanged.
"""
from __future__ import annotations

import urllib.parse
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from maskflow.functions.events import ObjectCreated
from maskflow.infra.domain.images import decode_image, encode_result
from maskflow.infra.domain.options import Options
from maskflow.infra.domain.outputs import RESULT_KINDS, result_keys
from maskflow.infra.domain.refine import finish
from maskflow.infra.stores.objects import StoredObject
from maskflow.infra.stores.tasks import normalise_sequencer


class Objects(Protocol):
    def get(self, key: str, etag: str = "") -> StoredObject: ...
    def publish(self, key: str, data: bytes, content_type: str, metadata: dict[str, str],
                version: str) -> None: ...


class Model(Protocol):
    def predict(self, rgb: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Context:
    task_id: str
    objects: Objects
    model: Model
    options: Options   # what the task asks of its results
    max_pixels: int
    refine_max_pixels: int
    writer: Executor  # writes one result while the next is encoded


def handle_object_created(event: ObjectCreated, ctx: Context) -> dict[str, str]:
    source = ctx.objects.get(event.key, etag=event.etag)
    rgb = decode_image(source.data, ctx.max_pixels)
    colours, alpha = finish(rgb, ctx.model.predict(rgb), ctx.options, ctx.refine_max_pixels)
    keys = result_keys(event.key, ctx.options)
    # S3 metadata travels in HTTP headers: ASCII only, hence the quoting.
    metadata = {"task-id": ctx.task_id, "source-key": urllib.parse.quote(event.key),
                "source-etag": source.etag}
    version = normalise_sequencer(event.sequencer)
    *earlier, last = RESULT_KINDS
    written = []
    try:
        # Each result but the last is written in the background while the next one is
        # encoded; all are stored before we return.
        for kind in earlier:
            written.append(ctx.writer.submit(ctx.objects.publish, keys[kind.name],
                                             encode_result(kind, colours, alpha, ctx.options),
                                             kind.content_type_for(ctx.options), metadata, version))
        ctx.objects.publish(keys[last.name], encode_result(last, colours, alpha, ctx.options),
                            last.content_type_for(ctx.options), metadata, version)
    finally:
        for write in written:
            write.result()
    return keys
