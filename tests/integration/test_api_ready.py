"""Issue 5: /readyz follows Redis and MinIO going away and coming back."""
from __future__ import annotations

import time

import pytest
import requests


def _ready(api) -> requests.Response:
    return requests.get(f"{api.url}/readyz", timeout=3)


def _poll(api, want: int, within: float) -> tuple[requests.Response, float]:
    """Poll /readyz until it answers `want`; returns the answer and how long it took."""
    started = time.monotonic()
    while True:
        r = _ready(api)
        elapsed = time.monotonic() - started
        if r.status_code == want or elapsed > within:
            return r, elapsed


@pytest.mark.parametrize("service", ["redis", "minio"])
def test_readyz_follows_a_backing_service(api, servers, service):
    assert _ready(api).status_code == 200
    servers.stack.stop(service)
    try:
        r, elapsed = _poll(api, 503, within=2.0)
        assert r.status_code == 503, r.text
        assert elapsed <= 2.0
        body = r.json()
        assert body["status"] == "not_ready" and body["error"]["code"] == "not_ready"
        assert body["checks"][service] != "ok"
        assert service in body["error"]["message"]
        other = {"redis": "minio", "minio": "redis"}[service]
        assert body["checks"][other] == "ok"
        # the API itself stays alive and its other errors keep their shape
        assert requests.get(f"{api.url}/healthz", timeout=3).status_code == 200
    finally:
        servers.stack.up(app=False)
    r, _ = _poll(api, 200, within=30.0)
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"redis": "ok", "minio": "ok"}
