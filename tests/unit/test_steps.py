"""The worker's steps against an in-memory event source: the seam another source would plug into.

The source, the task store and the object store are small fakes here; the model, the image
code, the parser and the steps are the real ones.
"""
from __future__ import annotations

import itertools
import json
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest

from checks import PHOTOS, png
from maskflow.functions import steps
from maskflow.functions.liveness import Stats
from maskflow.infra.domain.catalog import DEFAULT
from maskflow.infra.domain.images import decode_image
from maskflow.infra.domain.outputs import RESULT_KINDS, result_keys
from maskflow.infra.stores.objects import ObjectMissing, StoredObject
from maskflow.infra.stores.source import Delivery, EventSource
from maskflow.infra.stores.tasks import Decision, derive_task_id
from maskflow.infra.wiring.config import load_config

BUCKET = "ai-segmentation"


class MemorySource:
    """An EventSource over a deque: receipts are numbers, settled deliveries are recorded."""
    format = "minio-access"

    def __init__(self, *messages: bytes):
        self.queue = deque(messages)
        self.numbers = itertools.count(1)
        self.taken: dict[int, Delivery] = {}
        self.acked: list[Delivery] = []
        self.dead: list[tuple[Delivery, str]] = []
        self.given_back: list[tuple[Delivery, str]] = []

    def take(self, timeout: float) -> Delivery | None:
        if not self.queue:
            return None
        delivery = Delivery(next(self.numbers), self.queue.popleft(), 1)
        self.taken[delivery.receipt] = delivery
        return delivery

    def ack(self, delivery: Delivery) -> None:
        self.acked.append(self.taken.pop(delivery.receipt))

    def give_back(self, delivery: Delivery, error: str) -> None:
        self.given_back.append((self.taken.pop(delivery.receipt), error))

    def dead_letter(self, delivery: Delivery, reason: str, deliveries: int | None = None) -> None:
        self.dead.append((self.taken.pop(delivery.receipt), reason))

    def serve(self, models: tuple[str, ...], shared: bool = True) -> None:
        pass  # one list for every model

    def route(self, delivery: Delivery, model: str) -> None:
        self.queue.append(self.taken.pop(delivery.receipt).message)

    def split(self, delivery: Delivery, messages: list[bytes]) -> None:
        self.taken.pop(delivery.receipt)
        self.queue.extend(messages)


@dataclass
class MemoryTasks:
    """The task store's transitions the steps use, with their decisions, in a dict."""
    tasks: dict[str, dict] = field(default_factory=dict)

    def begin_event(self, bucket, input_key, etag, sequencer, worker_id, run_id, claim=""):
        task_id = derive_task_id(bucket, input_key)
        if self.tasks.get(task_id, {}).get("sequencer") == sequencer:
            return task_id, Decision.DUPLICATE, 1
        self.tasks[task_id] = {"status": "processing", "key": input_key, "sequencer": sequencer}
        return task_id, Decision.START, 1

    def complete(self, task_id, sequencer, results, model="", input_key="", options=None):
        self.tasks[task_id].update(status="completed", results=results, model=model, options=options)
        return True

    def fail(self, task_id, sequencer, error, input_key=""):
        self.tasks[task_id].update(status="failed", error=error)
        return True


class MemoryObjects:
    def __init__(self, **objects: bytes):
        self.objects = dict(objects)
        self.published: dict[str, tuple[bytes, str]] = {}

    def get(self, key: str, etag: str = "") -> StoredObject:
        if key not in self.objects:
            raise ObjectMissing(f"{BUCKET}/{key}: NoSuchKey")
        return StoredObject(key, self.objects[key], etag, "image/jpeg", {})

    def publish(self, key, data, content_type, metadata, version) -> None:
        self.published[key] = (data, content_type)


def created(key: str, size: int = 1000) -> bytes:
    record = {"eventName": "s3:ObjectCreated:Put",
              "s3": {"bucket": {"name": BUCKET},
                     "object": {"key": key, "size": size, "eTag": "e1", "sequencer": "17A0"}}}
    return json.dumps([{"Event": [record]}]).encode()


@pytest.fixture
def run_steps(person_model):
    """run_steps(source, tasks, objects): take and process until the source is empty."""
    writer = ThreadPoolExecutor(1)
    cfg = load_config(env={})

    def run(source: EventSource, tasks: MemoryTasks, objects: MemoryObjects) -> None:
        parts = steps.Parts(cfg=cfg, worker_id="memory", run_id="run", source=source, tasks=tasks,
                            objects=objects, models={DEFAULT: person_model}, stats=Stats(),
                            writer=writer)
        while (delivery := steps.take(parts, timeout=0)) is not None:
            steps.process(delivery, parts)
    yield run
    writer.shutdown()


def test_a_photo_from_an_in_memory_source_gives_every_result(run_steps, person_model):
    photo = (PHOTOS / "chelsea.jpg").read_bytes()
    source, tasks = MemorySource(created("input/cat.jpg")), MemoryTasks()
    objects = MemoryObjects(**{"input/cat.jpg": photo})
    run_steps(source, tasks, objects)

    assert [json.loads(d.message)[0]["Event"][0]["s3"]["object"]["key"] for d in source.acked] == ["input/cat.jpg"]
    assert not source.dead and not source.given_back and not source.taken
    (task,) = tasks.tasks.values()
    assert task["status"] == "completed" and task["results"] == result_keys("input/cat.jpg")
    assert set(objects.published) == set(result_keys("input/cat.jpg").values())
    for kind in RESULT_KINDS:
        data, content_type = objects.published[kind.key_for("input/cat.jpg")]
        assert content_type == kind.content_type
    mask = png(objects.published["masks/cat.jpg.png"][0])
    assert np.abs(mask.astype(int) - person_model.predict(decode_image(photo))).max() <= 1


def test_poison_and_untrusted_events_are_dead_lettered_and_the_next_one_served(run_steps):
    photo = (PHOTOS / "chelsea.jpg").read_bytes()
    source = MemorySource(b"not json", created("output/elsewhere.jpg"), created("input/ok.jpg"))
    tasks, objects = MemoryTasks(), MemoryObjects(**{"input/ok.jpg": photo})
    run_steps(source, tasks, objects)

    reasons = [reason for _delivery, reason in source.dead]
    assert reasons[0].startswith("poison event: not JSON")
    assert reasons[1] == "output/elsewhere.jpg: key outside input/"
    assert len(source.acked) == 1 and [t["status"] for t in tasks.tasks.values()] == ["completed"]


def test_a_missing_object_fails_its_task_and_settles_the_event(run_steps):
    source, tasks = MemorySource(created("input/gone.jpg")), MemoryTasks()
    run_steps(source, tasks, MemoryObjects())

    (task,) = tasks.tasks.values()
    assert task["status"] == "failed" and "NoSuchKey" in task["error"]
    assert len(source.acked) == 1 and not source.dead
