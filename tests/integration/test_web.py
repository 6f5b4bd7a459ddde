"""Issue 6 acceptance: the web page at / in headless Debian chromium, auth on, real stack.
Issue 14: its model selector changes the result; issue 24: its output options."""
from __future__ import annotations

import base64
import io
import contextlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from playwright import sync_api as playwright_api

from checks import iou, png, reference_mask
from conftest import FIXTURES, app_stack

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "web-test-token"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]

# Build File objects in the page and dispatch a real drop event on the drop zone.
DROP_JS = """([files]) => {
  const dt = new DataTransfer();
  for (const f of files) {
    const bytes = Uint8Array.from(atob(f.data), c => c.charCodeAt(0));
    dt.items.add(new File([bytes], f.name, {type: f.type}));
  }
  const zone = document.getElementById('drop');
  for (const type of ['dragenter', 'dragover', 'drop']) {
    zone.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
  }
}"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    assert CHROMIUM.exists(), "needs Debian's chromium: apt-get install -y chromium"
    with app_stack(tmp_path_factory.mktemp("web-stack"), workers=1, api={"token": TOKEN}) as s:
        yield s


def _file(path: Path, name: str | None = None, ctype: str = "image/jpeg") -> dict:
    return {"name": name or path.name, "type": ctype, "data": base64.b64encode(path.read_bytes()).decode()}


def _wait_for(page, predicate_js: str, timeout_s: float = 120) -> None:
    page.wait_for_function(predicate_js, timeout=timeout_s * 1000, polling=100)


@contextlib.contextmanager
def open_page(stack):
    """Headless Chromium on the stack's page; yields the page and the page errors it raised."""
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1400})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(stack.cfg.api_url + "/")
            yield page, errors
        finally:
            browser.close()


def test_drop_two_images_shows_cutouts_and_masks(stack, tmp_path):
    with open_page(stack) as (page, errors):
        # Without the token the API answers 401 and the page says so.
        page.evaluate(DROP_JS, [[_file(FIXTURES / "photos/coffee.jpg")]])
        _wait_for(page, "document.querySelectorAll('li.file[data-status=failed]').length === 1")
        assert "token" in page.inner_text("li.file .error")

        page.fill("#token", TOKEN)
        page.reload()  # the token survives in localStorage
        assert page.input_value("#token") == TOKEN
        page.evaluate(DROP_JS, [[_file(FIXTURES / "photos/chelsea.jpg"),
                                 _file(FIXTURES / "photos/camera_gray.png", ctype="image/png")]])
        _wait_for(page, "document.querySelectorAll('li.file[data-status=completed]').length === 2")
        # Both images of both rows actually loaded from their presigned URLs.
        _wait_for(page, "[...document.querySelectorAll('li.file img')].length === 4 && "
                        "[...document.querySelectorAll('li.file img')]"
                        ".every(i => i.complete && i.naturalWidth > 0)", 30)
        sizes = page.eval_on_selector_all(
            "li.file img", "imgs => imgs.map(i => [i.className, i.naturalWidth, i.naturalHeight])")
        assert sorted(sizes) == sorted([["cutout", 451, 300], ["mask", 451, 300],
                                        ["cutout", 512, 512], ["mask", 512, 512]])

        # A file that is not an image fails with the worker's reason on the page.
        bad = tmp_path / "fake.jpg"
        bad.write_bytes(b"this is text, not a JPEG")
        page.evaluate(DROP_JS, [[_file(bad)]])
        _wait_for(page, "document.querySelectorAll('li.file[data-status=failed]').length === 1")
        row = page.locator("li.file[data-status=failed]")
        assert "fake.jpg" in row.inner_text()
        assert len(row.locator(".error").inner_text()) > 15

        shot = tmp_path / "web.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(shot, ARTIFACTS / "web.png")
        assert not errors, errors


# A scene where the two models disagree: their reference masks overlap at IoU 0.48, so a mask
# that matches one reference at 0.99 cannot be the other's.
SCENE = "coffee.jpg"


def _page_mask(page, task_id: str) -> np.ndarray:
    """The mask image the page shows for the task, fetched from the URL the page loaded."""
    url = page.get_attribute(f"li.file[data-task-id='{task_id}'] img.mask", "src")
    resp = requests.get(url, timeout=10)
    resp.raise_for_status()
    return png(resp.content) / 255


def test_model_selector_changes_the_result(stack):
    assert iou(reference_mask(SCENE, "person"), reference_mask(SCENE, "general")) < 0.9
    listed = requests.get(stack.cfg.api_url + "/api/v1/models",
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).json()
    with open_page(stack) as (page, errors):
        # Without the token the listing is refused, and the page says why.
        _wait_for(page, "document.getElementById('model-help').textContent.includes('token')", 30)
        page.fill("#token", TOKEN)  # the selector fills once the token is there
        _wait_for(page, "document.querySelectorAll('#model option').length === 4", 30)
        options = page.eval_on_selector_all("#model option", "os => os.map(o => [o.value, o.textContent])")
        assert options == [["person", "person (default)"], ["general", "general"], ["u2net", "u2net"],
                           ["portrait", "portrait"]]
        assert page.input_value("#model") == listed["default"] == "person"
        good_for = {m["name"]: f"{m['good_for']}; {m['cost']}" for m in listed["models"]}
        assert page.inner_text("#model-help") == good_for["person"]

        # The default: the person model's mask.
        page.evaluate(DROP_JS, [[_file(FIXTURES / "photos" / SCENE)]])
        _wait_for(page, "document.querySelectorAll('li.file[data-status=completed]').length === 1")
        default_id = page.get_attribute("li.file[data-status=completed]", "data-task-id")

        # general, chosen in the selector: U^2-Netp's mask, and the row says so.
        page.select_option("#model", "general")
        assert page.inner_text("#model-help") == good_for["general"]
        page.evaluate(DROP_JS, [[_file(FIXTURES / "photos" / SCENE)]])
        _wait_for(page, "document.querySelectorAll('li.file[data-status=completed]').length === 2")
        _wait_for(page, "[...document.querySelectorAll('li.file img')].length === 4 && "
                        "[...document.querySelectorAll('li.file img')]"
                        ".every(i => i.complete && i.naturalWidth > 0)", 30)
        general_id = page.get_attribute("li.file[data-model=general]", "data-task-id")
        assert general_id and general_id != default_id
        assert "model general" in page.inner_text(f"li.file[data-task-id='{general_id}'] .head")
        assert page.get_attribute(f"li.file[data-task-id='{default_id}']", "data-model") == "person"

        assert iou(_page_mask(page, default_id), reference_mask(SCENE, "person")) >= 0.99
        assert iou(_page_mask(page, general_id), reference_mask(SCENE, "general")) >= 0.99
        assert not errors, errors


def test_output_options_on_the_page_shape_the_result(stack):
    """Issue 24: the page's format, crop and background controls reach the task."""
    with open_page(stack) as (page, errors):
        page.fill("#token", TOKEN)
        page.select_option("#format", "jpeg")
        page.check("#crop")
        page.check("#use-background")
        page.fill("#background", "#0000ff")
        page.evaluate(DROP_JS, [[_file(FIXTURES / "photos" / "astronaut.jpg")]])
        _wait_for(page, "document.querySelectorAll('li.file[data-status=completed]').length === 1")
        _wait_for(page, "[...document.querySelectorAll('li.file img')].length === 2 && "
                        "[...document.querySelectorAll('li.file img')]"
                        ".every(i => i.complete && i.naturalWidth > 0)", 30)
        task_id = page.get_attribute("li.file[data-status=completed]", "data-task-id")
        task = requests.get(f"{stack.cfg.api_url}/api/v1/tasks/{task_id}",
                            headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).json()
        assert task["options"] == {"format": "jpeg", "crop": "true", "background": "#0000ff"}
        cutout = requests.get(page.get_attribute("li.file img.cutout", "src"), timeout=10)
        image = Image.open(io.BytesIO(cutout.content))
        assert image.format == "JPEG" and image.size != (512, 512), "not a cropped JPEG"
        assert image.getpixel((1, 1))[2] > 200, "not on blue"
        assert not errors, errors
