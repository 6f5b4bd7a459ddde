"""Two notification targets, one result: every upload is delivered twice and processed once.

MinIO pushes each event through the fast target (no queue_dir, sent while the upload waits)
and the durable one (queue_dir, sent within 3 s, also after a Redis outage).  The worker must
drop the second copy before downloading anything, lose nothing while Redis is away, and still
complete an event that only the durable target delivered.
"""
from __future__ import annotations

import io
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from checks import PHOTOS, pipeline_idle, queued_events
from conftest import make_config
from maskflow.infra.ops.processes import free_port, wait_until
from maskflow.infra.ops.stack import Stack
from maskflow.infra.stores.objects import ObjectStore
from maskflow.infra.stores.tasks import TaskStore, derive_task_id
from maskflow.infra.stores.workers import worker_status

PHOTO = (PHOTOS / "rocket.jpg").read_bytes()


def upload(stack: Stack, key: str) -> None:
    client = ObjectStore(stack.cfg).client
    client.put_object(stack.cfg.minio.bucket, key, io.BytesIO(PHOTO), len(PHOTO), "image/jpeg")


def processed(r) -> int:
    """Tasks worker-0 has completed, from a heartbeat written after this call began."""
    asked = time.time()
    wait_until(lambda: float(worker_status(r, "worker-0").get("updated", 0)) > asked,
               "a fresh heartbeat", 10)
    return int(worker_status(r, "worker-0")["processed"])


def wait_completed(tasks: TaskStore, cfg, keys: list[str], timeout: float) -> None:
    def done() -> bool:
        found = [tasks.get(derive_task_id(cfg.minio.bucket, key)) for key in keys]
        return all(t is not None and t.status == "completed" for t in found)
    wait_until(done, f"{len(keys)} tasks to complete", timeout)


def assert_processed_once(tasks: TaskStore, cfg, keys: list[str]) -> None:
    for key in keys:
        task = tasks.get(derive_task_id(cfg.minio.bucket, key))
        assert (task.status, task.attempts) == ("completed", 1), task


@pytest.fixture(scope="module")
def dual(tmp_path_factory):
    """Redis + MinIO with both targets (the default config); workers start in the tests."""
    stack = Stack(make_config(tmp_path_factory.mktemp("dual")), log=lambda _msg: None)
    assert stack.cfg.queue.fast_target_id, "the default config has the fast target"
    stack.up(app=False)
    try:
        yield stack
    finally:
        stack.down()


def test_each_upload_arrives_twice_and_is_processed_once(dual, unique_prefix):
    r, cfg = dual.redis_client(), dual.cfg
    r.flushdb()
    keys = [f"input/{unique_prefix}/twice-{i}.jpg" for i in range(10)]
    for key in keys:
        upload(dual, key)
    # no worker yet: both copies of every event pile up, and they name the same version
    wait_until(lambda: Counter(e.key for e in queued_events(r, cfg.queue.events_key)) == Counter(keys * 2),
               "two copies of each event", 30)
    copies = {}
    for event in queued_events(r, cfg.queue.events_key):
        copies.setdefault(event.key, set()).add((event.sequencer, event.etag))
    assert all(len(versions) == 1 for versions in copies.values()), copies

    dual.start(lambda: dual.worker_service(0))
    try:
        tasks = TaskStore(r, cfg)
        wait_completed(tasks, cfg, keys, 60)
        wait_until(lambda: pipeline_idle(dual, r), "both copies taken", 30)
        assert_processed_once(tasks, cfg, keys)
        assert processed(r) == len(keys), "a second copy ran the model again"
    finally:
        dual.stop("worker-0")


def test_redis_killed_uploads_complete_once_after_up(dual, unique_prefix):
    r, cfg = dual.redis_client(), dual.cfg
    r.flushdb()
    dual.start(lambda: dual.worker_service(0))
    try:
        before = processed(r)
        os.kill(dual.running("redis"), signal.SIGKILL)
        wait_until(lambda: dual.running("redis") is None, "Redis to die", 10)
        keys = [f"input/{unique_prefix}/outage-{i:02d}.jpg" for i in range(20)]
        for key in keys:
            upload(dual, key)  # MinIO accepts them: the durable target stores each event
        dual.up(app=False)  # what `maskflow up` does: start what is not running
        r = dual.redis_client()
        tasks = TaskStore(r, cfg)
        wait_completed(tasks, cfg, keys, 90)
        wait_until(lambda: pipeline_idle(dual, r), "every event taken", 30)
        assert_processed_once(tasks, cfg, keys)
        assert processed(r) - before == len(keys)
    finally:
        dual.stop("worker-0")


class FastTargetDown(Stack):
    """A stack whose fast target points at a port nobody listens on."""

    dead_port = free_port()

    def minio_env(self) -> dict[str, str]:
        env = super().minio_env()
        env[f"MINIO_NOTIFY_REDIS_ADDRESS_{self.cfg.queue.fast_target_id}"] = f"127.0.0.1:{self.dead_port}"
        return env


def test_event_delivered_by_the_durable_target_alone_completes(tmp_path, unique_prefix):
    stack = FastTargetDown(make_config(Path(tmp_path)), log=lambda _msg: None)
    stack.up(app=False)
    try:
        stack.start(lambda: stack.worker_service(0))
        keys = [f"input/{unique_prefix}/durable-{i}.jpg" for i in range(3)]
        for key in keys:
            upload(stack, key)
        r = stack.redis_client()
        tasks = TaskStore(r, stack.cfg)
        wait_completed(tasks, stack.cfg, keys, 60)
        wait_until(lambda: pipeline_idle(stack, r), "every event taken", 30)
        assert_processed_once(tasks, stack.cfg, keys)
        assert processed(r) == len(keys)
    finally:
        stack.down()
