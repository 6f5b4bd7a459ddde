"""`POST /api/remove`, rembg's HTTP route, served by the pipeline: the curl forms of rembg's README
give what the real `rembg s` (2.0.86) gave (tests/fixtures/rembg_server, made by
models/make_parity_fixtures.py rembg-server), and what maskflow does not serve is a 400 in
rembg's error shape.  Real MinIO, Redis, API and a worker serving u2net."""
from __future__ import annotations

import io

import numpy as np
import pytest
import requests
from PIL import Image

from checks import PHOTOS, iou
from conftest import FIXTURES, app_stack

SERVER = FIXTURES / "rembg_server"
FORMS = {"plain": ({}, ""), "a": ({"a": "true"}, ""), "om": ({"om": "true"}, ""),
         "ppm": ({"ppm": "true"}, ""), "dc": ({"dc": "true"}, ""), "bgc": ({}, "bgc=255,0,0,255")}


@pytest.fixture(scope="module")
def app(servers, tmp_path_factory):
    with app_stack(tmp_path_factory.mktemp("rembg"), servers, workers=1,
                   worker={"models": ("person", "u2net")}, model={"concurrent_runs": 2}) as running:
        yield running


def remove(app, photo: str, fields: dict, query: str = "") -> requests.Response:
    url = f"{app.url}/api/remove" + (f"?{query}" if query else "")
    return requests.post(url, data=fields, files={"file": (photo, (PHOTOS / photo).read_bytes(), "image/jpeg")},
                         timeout=300)


def rgba(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGBA")).astype(float) / 255


@pytest.mark.parametrize("photo", ["astronaut.jpg", "coffee.jpg"])
@pytest.mark.parametrize("form", list(FORMS))
def test_the_curl_forms_give_what_rembg_s_gives(app, photo, form):
    fields, query = FORMS[form]
    r = remove(app, photo, {"model": "u2net", **fields}, query)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png", r.text[:300]
    ours, theirs = rgba(r.content), rgba((SERVER / f"{photo}.{form}.png").read_bytes())
    assert ours.shape == theirs.shape
    if form == "om":  # the mask, as a gray PNG: its values are the alpha
        ours_alpha, their_alpha = ours[:, :, 0], theirs[:, :, 0]
    else:
        ours_alpha, their_alpha = ours[:, :, 3], theirs[:, :, 3]
    assert iou(ours_alpha, their_alpha) >= 0.99, form
    assert np.abs(ours_alpha - their_alpha).mean() <= 0.01, form
    shown = their_alpha > 0
    if form != "om":
        colour = np.abs(ours[:, :, :3] - theirs[:, :, :3])[shown].mean()
        assert colour <= 2 / 255, f"{form}: colour differs by {colour * 255:.2f}/255 where it shows"


def test_without_a_model_it_is_u2net(app):
    plain = remove(app, "coffee.jpg", {})
    assert plain.status_code == 200
    theirs = rgba((SERVER / "coffee.jpg.plain.png").read_bytes())
    assert iou(rgba(plain.content)[:, :, 3], theirs[:, :, 3]) >= 0.99


@pytest.mark.parametrize("fields, query, says", [
    ({"model": "bria-rmbg"}, "", "model 'bria-rmbg' is not served here"),
    ({"model": "isnet-general-use"}, "", "is not served here"),
    ({"vm": "true"}, "", "vm (ViTMatte) is not supported"),
    ({"extras": '{"sam_prompt": []}'}, "", "extras are not supported"),
    ({}, "bgc=255,0,0,128", "only an opaque background"),
    ({"a": "maybe"}, "", "a: expected a boolean"),
    ({"a": "true", "af": "300"}, "", "matting_foreground: expected a whole number from 0 to 255"),
])
def test_what_is_not_served_here_is_a_400_in_rembgs_shape(app, fields, query, says):
    r = remove(app, "coffee.jpg", fields, query)
    assert r.status_code == 400 and set(r.json()) == {"detail"}, r.text
    assert says in r.json()["detail"]


def test_a_malformed_form_is_a_400_in_rembgs_shape(app):
    boundary = "b0undary"
    r = requests.post(f"{app.url}/api/remove", data=f"--{boundary}\r\n[True]--{boundary}--\r\n",
                      headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}, timeout=30)
    assert r.status_code == 400 and set(r.json()) == {"detail"}, r.text


def completed(app) -> int:
    metrics = requests.get(f"{app.url}/metrics", timeout=5).text
    return int(next(line for line in metrics.splitlines()
                    if line.startswith('maskflow_tasks{status="completed"}')).split()[-1])


def test_a_drop_in_request_is_a_task_like_any_other(app):
    before = completed(app)
    assert remove(app, "coffee.jpg", {"om": "true"}).status_code == 200
    assert completed(app) == before + 1, "the request's task is in the task counts"
    metrics = requests.get(f"{app.url}/metrics", timeout=5).text
    assert 'maskflow_http_requests_total{method="POST",route="/api/remove",status="200"}' in metrics
