"""The web page: `/` is api/static/index.html, `/static/<name>` the files beside it."""
from __future__ import annotations

import mimetypes
from pathlib import Path

import falcon

from maskflow.api.errors import not_found

STATIC_DIR = Path(__file__).resolve().parent / "static"


class StaticResource:
    """`/` -> api/static/index.html, `/static/<name>` -> api/static/<name> (if they exist)."""

    def __init__(self, root: Path = STATIC_DIR):
        self.root = root

    def _send(self, resp: falcon.Response, path: Path) -> None:
        try:
            path = path.resolve()
            path.relative_to(self.root.resolve())  # no escaping the folder with ../
        except (OSError, ValueError):
            raise not_found("no such file") from None
        if not path.is_file():
            raise not_found("no such file")
        resp.content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        resp.data = path.read_bytes()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._send(resp, self.root / "index.html")

    def on_get_file(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        self._send(resp, self.root / name)
