"""What the integration tests share: test photos, worker processes a test controls itself, and
checks that a task finished with the right results and that an API error has the one shape."""
from __future__ import annotations

import datetime as dt
import signal
import struct
import subprocess
import sys
import urllib.parse
from pathlib import Path

import cv2
import numpy as np
import requests

from conftest import FIXTURES, REPO, wait_for_task
from maskflow.functions.events import ObjectCreated, PoisonEvent, parse_message
from maskflow.infra.domain.images import decode_image
from maskflow.infra.domain.outputs import result_keys
from maskflow.infra.stores.keys import inflight_key
from maskflow.infra.stores.tasks import derive_task_id
from maskflow.infra.ops import roles

PHOTOS = FIXTURES / "photos"
JPEGS = sorted(p for p in PHOTOS.iterdir() if p.suffix == ".jpg")


def make_photo(i: int = 0, width: int = 64, height: int | None = None, *, source: str | None = None,
               ext: str = ".jpg", quality: int = 95) -> bytes:
    """The i-th of a series of distinct real photos, encoded as `ext`.

    Fixture photo `source`, else the fixture JPEGs in turn, resized to `width` + (i * 7) % 130
    pixels wide (a width of its own makes each photo distinct), or with `height` to exactly
    `width` x `height` (then mirrored every other round through the fixtures, to stay distinct).
    """
    img = cv2.imread(str(PHOTOS / source if source else JPEGS[i % len(JPEGS)]), cv2.IMREAD_COLOR)
    if height is None:
        w = width + (i * 7) % 130
        size = (w, int(img.shape[0] * w / img.shape[1]))
    else:
        size = (width, height)
        if (i // len(JPEGS)) % 2:
            img = cv2.flip(img, 1)
    shrink = size[0] < img.shape[1]
    img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    ok, buf = cv2.imencode(ext, img, [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else [])
    assert ok
    return buf.tobytes()


def counting_commands(r) -> list[str]:
    """The commands the Redis client `r` sends from now on, by name (the server's own counters
    are shared with every other client of it)."""
    sent: list[str] = []
    send = r.execute_command

    def execute_command(*args, **options):
        sent.append(args[0])
        return send(*args, **options)

    r.execute_command = execute_command
    return sent


def exif_tiff(orientation: int) -> bytes:
    """A TIFF block holding only EXIF's Orientation tag (274)."""
    return (b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1)
            + struct.pack(">HHIHH", 274, 3, 1, orientation, 0) + struct.pack(">I", 0))


def jpeg_with_orientation(data: bytes, orientation: int) -> bytes:
    """The JPEG `data` with an APP1 EXIF segment saying how it was stored (1..8)."""
    payload = b"Exif\x00\x00" + exif_tiff(orientation)
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def make_photos(root: Path, count: int, width: int = 64, *, nested: bool = False,
                quality: int = 95) -> list[str]:
    """Write make_photo(0..count-1) under `root` as img-000.jpg ...; returns their paths below root.

    Nested: spread over five folders ("", a, a/b, c, c/d/e), and every fourth one a PNG.
    """
    rels = []
    for i in range(count):
        ext = ".png" if nested and i % 4 == 0 else ".jpg"
        folder = ["", "a", "a/b", "c", "c/d/e"][i % 5] if nested else ""
        rel = f"{folder}/img-{i:03d}{ext}".lstrip("/")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(make_photo(i, width, ext=ext, quality=quality))
        rels.append(rel)
    return rels


def png(data: bytes, flags=cv2.IMREAD_UNCHANGED) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    assert img is not None, "not a decodable PNG"
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return img


def start_worker(cfg, worker_id: str, *extra: str, **popen) -> subprocess.Popen:
    """A worker process (`python -m maskflow.functions`) for `cfg` that the test starts and stops
    itself, with the worker's own credentials, as the stack starts one."""
    env = roles.service_env(cfg, "worker", roles.Credentials(cfg.secrets_dir))
    return subprocess.Popen([sys.executable, "-m", "maskflow.functions", "--id", worker_id, *extra],
                            env=env, cwd=REPO, **popen)


def stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def assert_error(response: requests.Response, status: int, code: str | None = None) -> dict:
    """The API's one error shape: {"error": {"status", "code", "message"}}."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"status", "code", "message"}
    assert body["error"]["status"] == status
    assert body["error"]["message"]
    if code:
        assert body["error"]["code"] == code
    return body["error"]


def finished_task(api_url: str, task_id: str) -> dict:
    """The task's answer once it is completed or failed, by the API's long poll."""
    for _ in range(20):  # each GET holds up to 30 s until the task is done
        task = requests.get(f"{api_url}/api/v1/tasks/{task_id}", params={"wait": 30}, timeout=40).json()
        if task["status"] in ("completed", "failed"):
            return task
    raise AssertionError(f"task {task_id} did not finish: {task}")


def queued_events(r, events_key: str) -> list[ObjectCreated]:
    """The events waiting in the list; items that are not MinIO's messages are passed over."""
    events = []
    for item in r.lrange(events_key, 0, -1):
        try:
            events += parse_message(item)
        except PoisonEvent:
            pass
    return events


def pipeline_idle(stack, r) -> bool:
    """Every event MinIO owes sent and taken: its event store empty, nothing queued or in flight."""
    stored = [p for p in stack.event_store.rglob("*") if p.is_file()]
    return not stored and r.llen(stack.cfg.queue.events_key) == 0 and not any(
        r.llen(key) for key in r.scan_iter(inflight_key("*")))


def presigned_expires_at(url: str) -> float:
    """When a presigned URL stops working (Unix time): its X-Amz-Date plus X-Amz-Expires."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    signed = dt.datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")
    return signed.replace(tzinfo=dt.timezone.utc).timestamp() + int(query["X-Amz-Expires"][0])


def reference_mask(photo: str, model: str) -> np.ndarray:
    """The upstream pipeline's foreground probability (0..1) for a fixture photo: MediaPipe's for
    `person`, rembg's U^2-Netp for `general` (models/make_parity_fixtures.py made them)."""
    if model == "person":
        return np.load(FIXTURES / "parity" / f"{photo}.mediapipe.npz")["prob"] / 65535
    return np.load(FIXTURES / "parity" / f"{photo}.rembg_u2netp.npz")["mask"] / 255


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks in 0..1, each cut at 0.5."""
    fa, fb = a >= 0.5, b >= 0.5
    union = (fa | fb).sum()
    return 1.0 if union == 0 else float((fa & fb).sum() / union)


def check_result(servers, objects, model, key: str, source: bytes, tasks):
    task = wait_for_task(tasks, derive_task_id(servers.cfg.minio.bucket, key), timeout=60)
    assert task is not None and task.status == "completed", task
    output_key, mask_key = result_keys(key).values()
    assert task.results == {"output": output_key, "mask": mask_key}
    rgb = decode_image(source)
    cutout = png(objects.get(output_key).data)
    mask = png(objects.get(mask_key).data)
    assert cutout.shape == rgb.shape[:2] + (4,)
    assert mask.shape == rgb.shape[:2]
    expected = model.predict(rgb)
    assert np.abs(mask.astype(int) - expected.astype(int)).max() <= 1
    assert np.array_equal(cutout[:, :, 3], mask)
    visible = mask > 0  # the cut-out is the photo where it shows, zero where it does not
    assert np.array_equal(cutout[:, :, 2::-1][visible], rgb[visible])
    assert not cutout[~visible].any()
    assert objects.get(mask_key).metadata.get("task-id") == task.task_id
    return task


__all__ = ["PHOTOS", "assert_error", "check_result", "iou", "pipeline_idle", "reference_mask", "presigned_expires_at", "queued_events", "make_photo", "make_photos", "start_worker", "stop_worker", "wait_for_task", "png"]
