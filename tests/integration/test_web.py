"""Issue 6 acceptance: the web page at / in headless Debian chromium, auth on, real stack."""
from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest

from conftest import FIXTURES, app_stack

from playwright import sync_api as playwright_api

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


def test_drop_two_images_shows_cutouts_and_masks(stack, tmp_path):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1400})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(stack.cfg.api_url + "/")

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
        finally:
            browser.close()
