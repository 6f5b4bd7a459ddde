"""Issue 14: each task names its model, on every path; real MinIO, Redis, API and a worker.

The scene photo is one where the two models disagree (the fixtures' masks overlap at IoU 0.72),
so a mask that matches one reference at 0.99 cannot be the other model's.
"""
from __future__ import annotations

import numpy as np
import pytest
import requests

from checks import PHOTOS, assert_error, finished_task, iou, png, reference_mask, wait_for_task
from conftest import app_stack
from maskflow.infra.domain.catalog import names
from maskflow.infra.stores.tasks import derive_task_id

SCENE = "chelsea.jpg"
PRODUCTS = "input/products-by-prefix/"


@pytest.fixture(scope="module")
def app(servers, tmp_path_factory):
    with app_stack(tmp_path_factory.mktemp("models"), servers, workers=1,
                   models={"by_prefix": {PRODUCTS: "general"}}) as running:
        yield running


def _mask_from_url(task: dict) -> np.ndarray:
    assert task["status"] == "completed", task
    r = requests.get(task["result"]["mask_image_url"], timeout=10)
    r.raise_for_status()
    return png(r.content) / 255


def _mask_of_key(objects, task) -> np.ndarray:
    assert task is not None and task.status == "completed", task
    return png(objects.get(task.results["mask"]).data) / 255


def _scene_matches(mask: np.ndarray, model: str, photo: str = SCENE) -> None:
    other = next(name for name in names() if name != model)
    assert iou(mask, reference_mask(photo, model)) >= 0.99, f"{photo}: not {model}'s mask"
    assert iou(mask, reference_mask(photo, other)) < 0.9, f"{photo}: the references are too alike to tell"


def test_models_are_listed(app):
    body = requests.get(f"{app.url}/api/v1/models", timeout=5).json()
    assert body["default"] == "person"
    by_name = {m["name"]: m for m in body["models"]}
    assert list(by_name) == ["person", "general", "u2net", "portrait"]
    assert by_name["person"]["input_size"] == [256, 256] and by_name["general"]["input_size"] == [320, 320]
    for m in by_name.values():
        assert m["good_for"] and m["cost"] and m["license"].startswith("Apache-2.0") and m["source"]
    assert [m["default"] for m in body["models"]] == [True, False, False, False]
    # rembg's names: u2netp is general's alias, u2net a model of its own
    assert by_name["general"]["aliases"] == ["u2netp"] and "u2netp" in body["names"]
    assert set(body["names"]) == {"person", "general", "u2netp", "u2net", "portrait"}
    # served right now, by live heartbeats: this module's worker serves the tests' pool
    assert by_name["person"]["workers"] >= 1 and by_name["general"]["workers"] >= 1
    assert by_name["u2net"]["workers"] == by_name["portrait"]["workers"] == 0


def test_api_upload_with_and_without_a_model(app):
    data = (PHOTOS / SCENE).read_bytes()
    submitted = {}
    for model in ("general", None):
        r = requests.post(f"{app.url}/api/v1/tasks/segmentation",
                          files={"file": (SCENE, data, "image/jpeg")},
                          data={"model": model} if model else None, timeout=30)
        assert r.status_code == 202, r.text
        assert set(r.json()) == {"task_id", "status", "created_at"}
        submitted[model] = r.json()["task_id"]
    general, default = finished_task(app.url, submitted["general"]), finished_task(app.url, submitted[None])
    assert general["model"] == "general"
    # no model named: exactly the original contract's fields
    assert set(default) == {"task_id", "status", "result", "error", "created_at", "completed_at"}
    _scene_matches(_mask_from_url(general), "general")
    _scene_matches(_mask_from_url(default), "person")


def test_an_unknown_model_is_refused_with_the_valid_names(app):
    data = (PHOTOS / SCENE).read_bytes()
    r = requests.post(f"{app.url}/api/v1/tasks/segmentation", files={"file": (SCENE, data, "image/jpeg")},
                      data={"model": "cats"}, timeout=30)
    assert "person, general" in assert_error(r, 400, "unknown_model")["message"]
    r = requests.post(f"{app.url}/api/v1/uploads", json={"filename": "a.jpg", "content_type": "image/jpeg",
                                                        "model": "cats"}, timeout=5)
    assert "person, general" in assert_error(r, 400, "unknown_model")["message"]


def test_presigned_uploads_carry_the_model_they_were_granted(app):
    data = (PHOTOS / SCENE).read_bytes()
    grant = requests.post(f"{app.url}/api/v1/uploads", json={
        "filename": SCENE, "content_type": "image/jpeg", "model": "general"}, timeout=5).json()
    assert grant["fields"]["x-amz-meta-model"] == "general"
    tampered = {**grant["fields"], "x-amz-meta-model": "person"}
    r = requests.post(grant["url"], data=tampered, files={"file": (SCENE, data, "image/jpeg")}, timeout=30)
    assert r.status_code == 403, r.text
    r = requests.post(grant["url"], data=grant["fields"], files={"file": (SCENE, data, "image/jpeg")}, timeout=30)
    assert r.status_code == 204, r.text
    task = finished_task(app.url, grant["task_id"])
    assert task["model"] == "general"
    _scene_matches(_mask_from_url(task), "general")

    grant = requests.post(f"{app.url}/api/v1/uploads", json={
        "filename": SCENE, "content_type": "image/jpeg", "model": "general", "method": "PUT",
        "size": len(data)}, timeout=5).json()
    assert grant["headers"]["X-Amz-Meta-Model"] == "general"
    unsigned = {k: v for k, v in grant["headers"].items() if k != "X-Amz-Meta-Model"}
    # MinIO: 400 for a signed header left out, 403 for one with another value
    assert requests.put(grant["url"], data=data, headers=unsigned, timeout=30).status_code == 400
    other = {**grant["headers"], "X-Amz-Meta-Model": "person"}
    assert requests.put(grant["url"], data=data, headers=other, timeout=30).status_code == 403
    assert requests.put(grant["url"], data=data, headers=grant["headers"], timeout=30).status_code == 200
    assert finished_task(app.url, grant["task_id"])["model"] == "general"


def test_mc_cp_with_model_metadata(app, servers, mc, tasks, objects, tmp_path, unique_prefix):
    bucket = servers.cfg.minio.bucket
    photo = tmp_path / SCENE
    photo.write_bytes((PHOTOS / SCENE).read_bytes())
    good, bad = f"input/{unique_prefix}/general.jpg", f"input/{unique_prefix}/unknown.jpg"
    mc("cp", "--attr", "X-Amz-Meta-Model=general", str(photo), f"local/{bucket}/{good}")
    mc("cp", "--attr", "X-Amz-Meta-Model=cats", str(photo), f"local/{bucket}/{bad}")
    task = wait_for_task(tasks, derive_task_id(bucket, good), timeout=120)
    assert task.model == "general"
    _scene_matches(_mask_of_key(objects, task), "general")
    failed = wait_for_task(tasks, derive_task_id(bucket, bad), timeout=120)
    assert failed.status == "failed"
    assert "unknown model 'cats'" in failed.error and "person, general" in failed.error
    assert not objects.exists(failed.results.get("mask") or f"masks/{unique_prefix}/unknown.jpg.png")


def test_batch_drop_under_a_mapped_prefix(app, servers, mc, tasks, objects, tmp_path, unique_prefix):
    """models.by_prefix serves uploaders that cannot set metadata: mc mirror of a folder."""
    bucket = servers.cfg.minio.bucket
    folder = tmp_path / "products"
    folder.mkdir()
    photos = ["chelsea.jpg", "coffee.jpg"]
    for name in photos:
        (folder / name).write_bytes((PHOTOS / name).read_bytes())
    mc("mirror", str(folder), f"local/{bucket}/{PRODUCTS}{unique_prefix}/")
    mc("mirror", str(folder), f"local/{bucket}/input/{unique_prefix}/")  # not mapped: the default
    for name in photos:
        mapped = wait_for_task(tasks, derive_task_id(bucket, f"{PRODUCTS}{unique_prefix}/{name}"), timeout=120)
        assert mapped.model == "general"
        _scene_matches(_mask_of_key(objects, mapped), "general", name)
        plain = wait_for_task(tasks, derive_task_id(bucket, f"input/{unique_prefix}/{name}"), timeout=120)
        assert plain.model is None
        _scene_matches(_mask_of_key(objects, plain), "person", name)
