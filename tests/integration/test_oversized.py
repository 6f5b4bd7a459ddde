"""An object over task.max_upload_bytes never reaches the model, nor the worker's memory.

Uploaded straight to MinIO (as any S3 client may), it is refused from its event's size: the
task fails with the limit in its reason, and the worker's peak memory stays far below the
object's size.  A good upload right after it still completes.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from checks import PHOTOS, check_result, wait_for_task
from conftest import app_stack
from maskflow.infra.stores.tasks import derive_task_id

MAX_WORKER_RSS_MB = 300
LIMIT = 4 * 1024 * 1024
OVERSIZED = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def limited_worker(servers, tmp_path_factory):
    """A worker whose upload limit is 4 MiB, so a 64 MiB object is 16 times over it."""
    with app_stack(tmp_path_factory.mktemp("oversized"), servers, with_api=False, workers=1,
                   task={"max_upload_bytes": LIMIT}) as stack:
        yield stack


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def test_oversized_upload_fails_from_its_event_without_being_read(servers, limited_worker, objects, person_model,
                                                                  tasks, unique_prefix):
    key = f"input/{unique_prefix}/huge.jpg"
    blob = os.urandom(OVERSIZED)
    objects.client.put_object(servers.cfg.minio.bucket, key, io.BytesIO(blob), len(blob), "image/jpeg")
    task = wait_for_task(tasks, derive_task_id(servers.cfg.minio.bucket, key), timeout=30)
    assert task is not None and task.status == "failed", task
    assert f"{OVERSIZED} bytes exceeds the limit of {LIMIT} bytes" in task.error

    good = f"input/{unique_prefix}/after-huge.jpg"
    data = (PHOTOS / "coffee.jpg").read_bytes()
    objects.put(good, data, "image/jpeg")
    check_result(servers, objects, person_model, good, data, tasks)
    peak = peak_rss_mb(limited_worker.running("worker-0"))
    print(f"\nworker peak RSS after a {OVERSIZED >> 20} MiB upload: {peak:.0f} MB")
    assert peak < MAX_WORKER_RSS_MB
