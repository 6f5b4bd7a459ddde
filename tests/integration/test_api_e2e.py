"""Issue 5 end to end: API + worker + real MinIO/Redis, driven the way clients use it."""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests

from infra.config import PROJECT_ROOT

PHOTOS = Path(__file__).resolve().parent.parent / "fixtures" / "photos"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def app(servers):
    if not (PROJECT_ROOT / "functions" / "__main__.py").exists():
        pytest.fail("functions/__main__.py (the worker) is missing")
    stack = servers.stack
    stack.up(app=True)  # reuses the session's Redis and MinIO, adds the API and the workers
    try:
        yield servers.cfg.api_url
    finally:
        # later modules expect nobody consuming the event list
        stack.stop("api")
        for i in range(servers.cfg.stack.workers):
            stack.stop(f"worker-{i}")


def _png(url: str) -> np.ndarray:
    r = requests.get(url, timeout=10)
    assert r.status_code == 200, r.text
    assert r.content.startswith(PNG_MAGIC)
    image = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return image


def _poll(fetch, done, timeout: float, interval: float = 0.2):
    """Call fetch() until done(result) or the deadline; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = fetch()
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(interval)  # polling interval against a deadline, not a fixed wait


def test_original_client_example(app):
    """Design section 7, as written: submit with files={'file': ...}, then poll_result."""
    base = app
    with open(PHOTOS / "chelsea.jpg", "rb") as f:
        files = {"file": f}
        response = requests.post(f"{base}/api/v1/tasks/segmentation", files=files)
    task_id = response.json()["task_id"]

    def poll_result(task_id, max_polls=150):
        for _ in range(max_polls):
            response = requests.get(f"{base}/api/v1/tasks/{task_id}")
            data = response.json()
            if data["status"] == "completed":
                return data["result"]
            elif data["status"] == "failed":
                raise Exception(data["error"])
            time.sleep(2)  # the contract's client poll interval (design 5.2)
        raise TimeoutError("Task polling timeout")

    result = poll_result(task_id)
    source = cv2.imread(str(PHOTOS / "chelsea.jpg"))
    segmented = _png(result["segmented_image_url"])
    mask = _png(result["mask_image_url"])
    assert segmented.shape[:2] == mask.shape[:2] == source.shape[:2]


def test_wait_parameter_returns_the_finished_task(app):
    with open(PHOTOS / "rocket.jpg", "rb") as f:
        task_id = requests.post(f"{app}/api/v1/tasks/segmentation", files={"file": f}).json()["task_id"]
    data = _poll(lambda: requests.get(f"{app}/api/v1/tasks/{task_id}?wait=30", timeout=35).json(),
                 lambda d: d["status"] in ("completed", "failed"), timeout=120)
    assert data["status"] == "completed", data
    assert data["completed_at"] and data["result"]["mask_image_url"]


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    assert ok
    return buf.tobytes()


def test_direct_uploads_are_found_by_key_and_batches_summarised(app, servers, mc, tmp_path,
                                                                unique_prefix):
    bucket = servers.cfg.minio.bucket
    single = tmp_path / "direct.jpg"
    single.write_bytes(_jpeg(0))
    key = f"input/{unique_prefix}/direct.jpg"
    mc("cp", str(single), f"local/{bucket}/{key}")
    found = _poll(lambda: requests.get(f"{app}/api/v1/tasks", params={"key": key}, timeout=5),
                  lambda r: r.status_code == 200 and r.json()["status"] == "completed", timeout=60)
    assert found.status_code == 200, found.text
    assert found.json()["status"] == "completed", found.text
    _png(found.json()["result"]["mask_image_url"])

    folder = tmp_path / "batch1"
    folder.mkdir()
    broken = {f"img-{i:03d}.jpg" for i in (7, 31)}
    for i in range(50):
        name = f"img-{i:03d}.jpg"
        (folder / name).write_bytes(b"this is not an image" if name in broken else _jpeg(i))
    prefix = f"input/{unique_prefix}/batch1/"
    mc("mirror", str(folder), f"local/{bucket}/{prefix}")
    batch_url = f"{app}/api/v1/batches/{prefix}"
    body = _poll(lambda: requests.get(batch_url, timeout=5).json(),
                 lambda b: b.get("done") == 50, timeout=240, interval=1.0)
    assert body["total"] == 50 and body["done"] == 50, body
    assert body["counts"] == {"pending": 0, "processing": 0, "completed": 48, "failed": 2}
    assert {f["key"] for f in body["failures"]} == {prefix + name for name in broken}
    assert all(f["error"] for f in body["failures"])
    page = requests.get(batch_url, params={"limit": 1, "offset": 1}, timeout=5).json()
    assert len(page["failures"]) == 1 and page["failures_total"] == 2
