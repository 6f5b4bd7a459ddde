"""Running the API: liveness, readiness, Prometheus metrics and the OpenAPI document."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import falcon

from maskflow.api import metrics
from maskflow.api.deps import Deps
from maskflow.api.errors import body as error_body


class HealthResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class ReadyResource:
    """Redis and MinIO reachable and the bucket present; probes run in parallel, ~0.5 s each."""

    def __init__(self, deps: Deps):
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        checks: dict[str, str] = {}

        def run(name: str, probe: Callable[[], Any]) -> None:
            try:
                result = probe()
                checks[name] = "ok" if result is not False else "failed"
            except Exception as exc:  # noqa: BLE001 - any failure means not ready
                checks[name] = f"{type(exc).__name__}: {exc}"[:300]

        threads = [threading.Thread(target=run, args=item, daemon=True)
                   for item in self.deps.readiness.items()]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 1.0
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for name in self.deps.readiness:
            checks.setdefault(name, "timed out")
        down = sorted(name for name, state in checks.items() if state != "ok")
        if down:
            resp.status = falcon.HTTP_503
            resp.media = {**error_body(503, "not_ready", "not ready: " + ", ".join(
                f"{name} ({checks[name]})" for name in down)), "status": "not_ready",
                "checks": checks}
        else:
            resp.media = {"status": "ready", "checks": checks}


class MetricsResource:
    def __init__(self, deps: Deps):
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "text/plain; version=0.0.4; charset=utf-8"
        resp.text = metrics.render(self.deps.http_metrics, self.deps.redis, self.deps.tasks,
                                       self.deps.cfg.queue.events_key)


class OpenApiResource:
    def __init__(self, document: dict):
        self.document = document

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.document
