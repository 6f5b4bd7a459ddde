"""Checks shared by the pipeline tests: a task finished and its results are right."""
from __future__ import annotations

import cv2
import numpy as np

from conftest import FIXTURES, wait_for_task
from functions.handlers import result_keys
from infra.images import decode_image
from infra.tasks import derive_task_id

PHOTOS = FIXTURES / "photos"


def png(data: bytes, flags=cv2.IMREAD_UNCHANGED) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    assert img is not None, "not a decodable PNG"
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return img


def check_result(servers, store, model, key: str, source: bytes, tasks):
    task = wait_for_task(tasks, derive_task_id(servers.cfg.minio.bucket, key), timeout=60)
    assert task is not None and task.status == "completed", task
    output_key, mask_key = result_keys(key)
    assert (task.output_key, task.mask_key) == (output_key, mask_key)
    rgb = decode_image(source)
    cutout = png(store.get(output_key).data)
    mask = png(store.get(mask_key).data)
    assert cutout.shape == rgb.shape[:2] + (4,)
    assert mask.shape == rgb.shape[:2]
    expected = model.predict(rgb)
    assert np.abs(mask.astype(int) - expected.astype(int)).max() <= 1
    assert np.array_equal(cutout[:, :, 3], mask)
    assert store.get(mask_key).metadata.get("task-id") == task.task_id
    return task


__all__ = ["PHOTOS", "check_result", "wait_for_task", "png"]
