"""What a task gets back, on every path: the options (format, background, crop, refine,
post_process) through the API, presigned POST and PUT, `mc cp --attr` and a prefix's default,
with the results decoded by Pillow; bad values refused on every path.  Real MinIO, Redis, API
and a worker."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import requests
from PIL import Image

from checks import PHOTOS, assert_error, finished_task, wait_for_task
from conftest import app_stack
from maskflow.infra.domain.images import crop_box, cutout_rgba, decode_image, on_background
from maskflow.infra.stores.tasks import derive_task_id
from maskflow.infra.wiring.config import env_for

PHOTO = "astronaut.jpg"
PREFIXED = "input/outputs-by-prefix/"
REFINE_MAX_PIXELS = 300_000  # above astronaut.jpg (512x512), below motorcycle.jpg (741x500)


@pytest.fixture(scope="module")
def app(servers, tmp_path_factory):
    with app_stack(tmp_path_factory.mktemp("outputs"), servers, workers=1,
                   outputs={"by_prefix": {PREFIXED: "format=webp&crop=true"},
                            "refine_max_pixels": REFINE_MAX_PIXELS}) as running:
        yield running


@pytest.fixture(scope="module")
def expected(person_model):
    """The photo and the person model's mask for it, as the worker computes them."""
    rgb = decode_image((PHOTOS / PHOTO).read_bytes())
    return rgb, person_model.predict(rgb)


def results(task: dict) -> tuple[Image.Image, np.ndarray]:
    """The cut-out (Pillow, checked by its own decoder) and the mask of a completed task."""
    assert task["status"] == "completed", task
    cutout = requests.get(task["result"]["segmented_image_url"], timeout=10)
    mask = requests.get(task["result"]["mask_image_url"], timeout=10)
    cutout.raise_for_status(), mask.raise_for_status()
    image = Image.open(io.BytesIO(cutout.content))
    image.load()
    return image, np.asarray(Image.open(io.BytesIO(mask.content)))


def submit(app, photo: str = PHOTO, **fields: str) -> dict:
    r = requests.post(f"{app.url}/api/v1/tasks/segmentation", data=fields,
                      files={"file": (photo, (PHOTOS / photo).read_bytes(), "image/jpeg")}, timeout=30)
    assert r.status_code == 202, r.text
    return finished_task(app.url, r.json()["task_id"])


def test_no_option_keeps_the_contract_and_the_png_pair(app, expected):
    rgb, mask = expected
    task = submit(app)
    assert set(task) == {"task_id", "status", "result", "error", "created_at", "completed_at"}
    cutout, stored_mask = results(task)
    assert cutout.format == "PNG" and cutout.mode == "RGBA"
    assert task["result"]["segmented_image_url"].split("?")[0].endswith(".jpg.png")
    assert np.array_equal(np.asarray(cutout), cutout_rgba(rgb, mask))
    assert np.array_equal(stored_mask, mask)


@pytest.mark.parametrize("fields, fmt, mode", [
    ({"format": "webp"}, "WEBP", "RGBA"),
    ({"format": "jpeg"}, "JPEG", "RGB"),
    ({"format": "png", "background": "#ff0000"}, "PNG", "RGB"),
    ({"format": "webp", "background": "#00ff00"}, "WEBP", "RGB"),
])
def test_formats_and_backgrounds_through_the_api(app, expected, fields, fmt, mode):
    rgb, mask = expected
    task = submit(app, **fields)
    assert task["options"] == {k: v for k, v in fields.items() if v != "png"}
    cutout, stored_mask = results(task)
    assert (cutout.format, cutout.mode, cutout.size) == (fmt, mode, (rgb.shape[1], rgb.shape[0]))
    assert task["result"]["segmented_image_url"].split("?")[0].endswith(
        {"WEBP": ".webp", "JPEG": ".jpg", "PNG": ".png"}[fmt])
    assert np.array_equal(stored_mask, mask), "the mask stays the model's 8-bit PNG"
    pixels = np.asarray(cutout).astype(int)
    if mode == "RGBA":  # lossless WebP: the PNG's alpha, and its colours wherever they show
        want = cutout_rgba(rgb, mask).astype(int)
        visible = mask > 0  # libwebp rewrites the colour of fully transparent pixels
        assert np.array_equal(pixels[:, :, 3], want[:, :, 3])
        assert np.array_equal(pixels[visible], want[visible])
        return
    colour = fields.get("background", "#ffffff")
    want = on_background(rgb, mask, tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))).astype(int)
    if fmt == "JPEG":
        assert np.abs(pixels - want).mean() < 3  # q90
    else:
        assert np.array_equal(pixels, want)


def test_crop_with_a_margin_and_post_processing(app, expected):
    rgb, mask = expected
    task = submit(app, crop="true", crop_margin="7", post_process="true")
    cutout, stored_mask = results(task)
    assert set(np.unique(stored_mask)) <= {0, 255}, "a post-processed mask is hard"
    assert np.mean(stored_mask != mask) > 0.001, "post-processing changed nothing"
    rows, cols = crop_box(stored_mask, 7)
    assert (cutout.height, cutout.width) == (rows.stop - rows.start, cols.stop - cols.start)
    assert (cutout.height, cutout.width) != rgb.shape[:2], "nothing was cropped"
    assert np.array_equal(np.asarray(cutout), cutout_rgba(rgb, stored_mask)[rows, cols])


def test_refined_edges(app, expected):
    rgb, mask = expected
    soft = (mask > 0) & (mask < 255)
    cutout, stored_mask = results(submit(app, refine="decontaminate"))
    pixels = np.asarray(cutout)
    assert np.array_equal(stored_mask, mask), "decontaminate keeps the mask"
    assert np.abs(pixels[:, :, :3][soft].astype(int) - rgb[soft]).mean() > 1, "the edge colours were not re-estimated"
    cutout, stored_mask = results(submit(app, refine="matting", matting_erode="5"))
    assert np.asarray(cutout)[:, :, 3].shape == mask.shape
    assert np.mean(stored_mask != mask) > 0.001, "matting changed nothing"


def test_refining_more_pixels_than_the_limit_fails_that_task_only(app):
    for refine in ("matting", "decontaminate"):
        task = submit(app, "motorcycle.jpg", refine=refine)
        assert task["status"] == "failed", task
        assert task["error"] == (f"refine={refine} is limited to {REFINE_MAX_PIXELS} pixels "
                                 f"(outputs.refine_max_pixels); this image has {741 * 500}")
    assert submit(app, "motorcycle.jpg")["status"] == "completed", "the same image without refine"


def test_presigned_post_and_put_bind_the_options(app):
    data = (PHOTOS / PHOTO).read_bytes()
    grant = requests.post(f"{app.url}/api/v1/uploads", json={
        "filename": PHOTO, "content_type": "image/jpeg", "options": {"format": "webp", "crop": True}},
        timeout=5).json()
    assert grant["fields"]["x-amz-meta-format"] == "webp" and grant["fields"]["x-amz-meta-crop"] == "true"
    tampered = {**grant["fields"], "x-amz-meta-format": "jpeg"}
    r = requests.post(grant["url"], data=tampered, files={"file": (PHOTO, data, "image/jpeg")}, timeout=30)
    assert r.status_code == 403, r.text
    r = requests.post(grant["url"], data=grant["fields"], files={"file": (PHOTO, data, "image/jpeg")}, timeout=30)
    assert r.status_code == 204, r.text
    cutout, _ = results(finished_task(app.url, grant["task_id"]))
    assert cutout.format == "WEBP" and cutout.size != (512, 512)

    grant = requests.post(f"{app.url}/api/v1/uploads", json={
        "filename": PHOTO, "content_type": "image/jpeg", "method": "PUT", "size": len(data),
        "options": {"format": "jpeg", "background": "#0000ff"}}, timeout=5).json()
    assert grant["headers"]["X-Amz-Meta-Format"] == "jpeg"
    other = {**grant["headers"], "X-Amz-Meta-Background": "#ff0000"}
    assert requests.put(grant["url"], data=data, headers=other, timeout=30).status_code == 403
    assert requests.put(grant["url"], data=data, headers=grant["headers"], timeout=30).status_code == 200
    task = finished_task(app.url, grant["task_id"])
    assert task["options"] == {"format": "jpeg", "background": "#0000ff"}
    cutout, _ = results(task)
    assert cutout.format == "JPEG" and cutout.getpixel((2, 2))[2] > 200, "not on blue"


def test_mc_cp_metadata_and_a_prefix_default(app, servers, mc, tasks, tmp_path, unique_prefix):
    bucket, photo = servers.cfg.minio.bucket, tmp_path / PHOTO
    photo.write_bytes((PHOTOS / PHOTO).read_bytes())
    direct = f"input/{unique_prefix}/{PHOTO}"
    mc("cp", "--attr", "X-Amz-Meta-Format=webp;X-Amz-Meta-Background=#102030;X-Amz-Meta-Colour=blue",
       str(photo), f"local/{bucket}/{direct}")
    mapped, overridden = f"{PREFIXED}{unique_prefix}/a.jpg", f"{PREFIXED}{unique_prefix}/b.jpg"
    mc("cp", str(photo), f"local/{bucket}/{mapped}")
    mc("cp", "--attr", "X-Amz-Meta-Format=jpeg", str(photo), f"local/{bucket}/{overridden}")
    shapes = {}
    for key in (direct, mapped, overridden):
        task = wait_for_task(tasks, derive_task_id(bucket, key), timeout=60)
        assert task.status == "completed", task
        shapes[key] = (task.options, task.results["output"].rsplit(".", 1)[1])
    # an unknown metadata key (colour) is someone else's: ignored
    assert shapes[direct] == ({"format": "webp", "background": "#102030"}, "webp")
    assert shapes[mapped] == ({"format": "webp", "crop": "true"}, "webp")
    assert shapes[overridden] == ({"format": "jpeg", "crop": "true"}, "jpg"), "metadata wins, option by option"


def test_bad_options_are_refused_on_every_path(app, servers, mc, tasks, tmp_path, unique_prefix):
    r = requests.post(f"{app.url}/api/v1/tasks/segmentation",
                      data={"format": "gif", "crop_margin": "5", "shadow": "yes"},
                      files={"file": (PHOTO, (PHOTOS / PHOTO).read_bytes(), "image/jpeg")}, timeout=30)
    message = assert_error(r, 400, "bad_options")["message"]
    assert "shadow" in message
    r = requests.post(f"{app.url}/api/v1/tasks/segmentation", data={"format": "gif", "crop_margin": "5"},
                      files={"file": (PHOTO, (PHOTOS / PHOTO).read_bytes(), "image/jpeg")}, timeout=30)
    message = assert_error(r, 400, "bad_options")["message"]
    assert "format: expected one of png, webp, jpeg" in message
    r = requests.post(f"{app.url}/api/v1/tasks/segmentation", data={"crop_margin": "5", "matting_erode": "3"},
                      files={"file": (PHOTO, (PHOTOS / PHOTO).read_bytes(), "image/jpeg")}, timeout=30)
    message = assert_error(r, 400, "bad_options")["message"]
    assert "crop_margin needs crop=true" in message and "matting_erode needs refine=matting" in message
    r = requests.post(f"{app.url}/api/v1/uploads", json={
        "filename": PHOTO, "content_type": "image/jpeg", "options": {"background": "red"}}, timeout=5)
    assert "background: expected a colour #RRGGBB" in assert_error(r, 400, "bad_options")["message"]
    photo = tmp_path / PHOTO
    photo.write_bytes((PHOTOS / PHOTO).read_bytes())
    key = f"input/{unique_prefix}/bad.jpg"
    mc("cp", "--attr", "X-Amz-Meta-Refine=magic", str(photo), f"local/{servers.cfg.minio.bucket}/{key}")
    task = wait_for_task(tasks, derive_task_id(servers.cfg.minio.bucket, key), timeout=60)
    assert task.status == "failed" and "refine: expected one of none, matting, decontaminate" in task.error


def test_the_cli_asks_for_options_and_a_rerun_redoes_what_changed(app, tmp_path):
    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    (folder / PHOTO).write_bytes((PHOTOS / PHOTO).read_bytes())

    def batch(*flags: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "maskflow.infra.sdk.cli", "batch", str(folder),
                               "--via", "api", "--out", str(out), *flags],
                              env={**os.environ, **env_for(app.cfg)}, capture_output=True, text=True, timeout=120)

    first = batch("--format", "webp")
    assert first.returncode == 0, first.stderr
    assert Image.open(out / "astronaut.webp").format == "WEBP" and (out / "astronaut.mask.png").exists()
    again = batch("--format", "webp")
    assert "1 already done" in again.stderr
    other = batch("--format", "jpeg", "--crop")
    assert other.returncode == 0 and "0 already done" in other.stderr, other.stderr
    assert Image.open(out / "astronaut.jpg").format == "JPEG"
    recorded = json.loads((out / ".maskflow-models.json").read_text())
    assert recorded == {"astronaut": "|crop=true&format=jpeg"}
