"""Issue 5, offline: routing, the error shape, limits, auth, start-up checks, metrics text.

The app is built with the real adapters pointed at closed ports: every case here is answered
before Redis or MinIO would be touched (or checks the 503 the app gives when they are down).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import falcon.testing
import pytest
import requests

from conftest import REPO
from maskflow.api.app import build_deps, check_credentials, create_app
from maskflow.api.metrics import HttpMetrics
from maskflow.api.openapi import document
from maskflow.infra.ops.processes import free_port
from maskflow.infra.wiring.config import ConfigError, load_config, replace

PHOTO = (Path(__file__).resolve().parent.parent / "fixtures" / "photos" / "chelsea.jpg").read_bytes()


def offline_config(max_upload_bytes=None, **api):
    cfg = load_config(env={})
    task = {"max_upload_bytes": max_upload_bytes} if max_upload_bytes else {}
    return replace(cfg, redis={"port": free_port()},
                   minio={"endpoint": f"127.0.0.1:{free_port()}"}, api=api, task=task)


@pytest.fixture
def client():
    return falcon.testing.TestClient(create_app(build_deps(offline_config(max_upload_bytes=100_000))))


def multipart(files=None, data=None):
    form = requests.Request("POST", "http://x", files=files, data=data).prepare()
    return {"body": form.body, "headers": {"Content-Type": form.headers["Content-Type"]}}


def error_of(result, status):
    assert result.status_code == status, result.text
    assert set(result.json) == {"error"}
    assert set(result.json["error"]) == {"status", "code", "message"}
    assert result.json["error"]["status"] == status
    return result.json["error"]


URL = "/api/v1/tasks/segmentation"


def test_submit_validation_happens_before_storage(client):
    assert error_of(client.simulate_post(URL, **multipart({"file": ("a.jpg", b"\xff" * 100_001)})),
                    413)["code"] == "payload_too_large"
    assert error_of(client.simulate_post(URL, **multipart({"other": ("a.jpg", PHOTO)})),
                    400)["code"] == "missing_file"
    assert error_of(client.simulate_post(URL), 400)["code"] == "missing_file"
    assert error_of(client.simulate_post(URL, body=PHOTO, headers={"Content-Type": "image/jpeg"}),
                    415)["code"] == "unsupported_media_type"
    assert error_of(client.simulate_post(URL, **multipart({"file": ("a.gif", b"GIF89a" + b"\0" * 3)})),
                    422)["code"] == "invalid_image"
    err = error_of(client.simulate_post(URL, **multipart({"file": ("a.pdf", b"%PDF-1.4 ...")})), 415)
    assert err["code"] == "unsupported_image" and "JPEG" in err["message"]


def test_backing_services_down_gives_503_in_the_same_shape(client):
    err = error_of(client.simulate_post(URL, **multipart({"file": ("a.jpg", PHOTO)})), 503)
    assert err["code"] == "service_unavailable"
    error_of(client.simulate_get("/api/v1/tasks/abc"), 503)
    ready = client.simulate_get("/readyz")
    assert ready.status_code == 503 and ready.json["status"] == "not_ready"
    assert set(ready.json["checks"]) == {"redis", "minio"}
    assert "maskflow_redis_up 0" in client.simulate_get("/metrics").text


def test_falcon_errors_use_our_shape(client):
    assert error_of(client.simulate_get("/nope"), 404)["message"] == "no route for GET /nope"
    error_of(client.simulate_put("/api/v1/uploads"), 405)
    error_of(client.simulate_post("/api/v1/uploads", body=b"{", headers={"Content-Type": "application/json"}), 400)
    error_of(client.simulate_get("/api/v1/tasks/x", params={"wait": "nan"}), 400)


def test_token_guards_api_routes_only():
    app = create_app(build_deps(offline_config(token="t0ken")))
    c = falcon.testing.TestClient(app)
    r = c.simulate_get("/api/v1/tasks/x")
    assert error_of(r, 401)["code"] == "unauthorized"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    error_of(c.simulate_get("/api/v1/tasks/x", headers={"Authorization": "Bearer t0ke"}), 401)
    error_of(c.simulate_get("/api/v1/tasks/x", headers={"Authorization": "Bearer t0ken"}), 503)
    assert c.simulate_get("/healthz").status_code == 200
    assert c.simulate_get("/metrics").status_code == 200


def test_token_guards_the_rembg_drop_in_too():
    c = falcon.testing.TestClient(create_app(build_deps(offline_config(token="t0ken"))))
    assert error_of(c.simulate_post("/api/remove"), 401)["code"] == "unauthorized"
    r = c.simulate_post("/api/remove", headers={"Authorization": "Bearer t0ken"})
    assert r.status_code == 400 and "multipart/form-data" in r.json["detail"]  # past the token, rembg's shape


def test_document_covers_every_route(client):
    doc = document(load_config(env={}))
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {
        "/api/v1/tasks/segmentation", "/api/v1/tasks/{task_id}", "/api/v1/tasks",
        "/api/v1/uploads", "/api/v1/models", "/api/v1/batches/{prefix}", "/api/v1/openapi.json",
        "/api/remove", "/healthz", "/readyz", "/metrics", "/api/v1/results"}
    served = client.simulate_get("/api/v1/openapi.json").json
    assert served["paths"].keys() == doc["paths"].keys()
    # limits in the document come from the running config
    assert served["components"]["schemas"]["UploadRequest"]["properties"]["size"]["maximum"] == 100_000


def test_default_credentials_only_on_loopback():
    check_credentials(load_config(env={}))  # loopback: allowed, with a warning
    with pytest.raises(ConfigError, match="minioadmin"):
        check_credentials(replace(load_config(env={}), api={"host": "0.0.0.0"}))
    with pytest.raises(ConfigError, match="minio.endpoint=10.0.0.5"):
        check_credentials(replace(load_config(env={}), minio={"endpoint": "10.0.0.5:9000"}))
    check_credentials(replace(load_config(env={}), api={"host": "0.0.0.0"},
                              minio={"access_key": "svc", "secret_key": "long-secret"}))


@pytest.mark.parametrize("env, message", [
    ({"MASKFLOW_API_PORT": "http"}, "config key api.port: bad value"),
    ({"MASKFLOW_API_HOST": "0.0.0.0"}, "refusing MinIO's default credentials"),
    ({"MASKFLOW_API_THREDS": "4"}, "no such config key api.threds"),
])
def test_bad_config_fails_at_start_with_one_line(env, message):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MASKFLOW_")}
    proc = subprocess.run([sys.executable, "-m", "maskflow.api"], env={**clean, **env}, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_latency_histogram_is_cumulative():
    m = HttpMetrics()
    m.observe("GET", "/healthz", 200, 0.003)
    m.observe("GET", "/healthz", 200, 0.2)
    m.observe("GET", "/healthz", 200, 0.005)  # on a bound: `le` counts it
    m.observe("GET", "/healthz", 200, 40.0)  # past every bound: only +Inf
    lines = m.render()
    assert 'maskflow_http_requests_total{method="GET",route="/healthz",status="200"} 4' in lines
    assert 'maskflow_http_request_duration_seconds_bucket{method="GET",route="/healthz",le="0.005"} 2' in lines
    assert 'maskflow_http_request_duration_seconds_bucket{method="GET",route="/healthz",le="0.1"} 2' in lines
    assert 'maskflow_http_request_duration_seconds_bucket{method="GET",route="/healthz",le="0.25"} 3' in lines
    assert 'maskflow_http_request_duration_seconds_bucket{method="GET",route="/healthz",le="30"} 3' in lines
    assert 'maskflow_http_request_duration_seconds_bucket{method="GET",route="/healthz",le="+Inf"} 4' in lines
    assert 'maskflow_http_request_duration_seconds_count{method="GET",route="/healthz"} 4' in lines


def test_metrics_labels_come_from_a_fixed_set(client):
    """Random methods and paths add no series: method OTHER, route template or unmatched."""
    import random
    import string
    import warnings
    from wsgiref.validate import WSGIWarning

    rng = random.Random(9)

    def series() -> list[str]:
        text = client.simulate_get("/metrics").text
        return [line.rpartition(" ")[0] for line in text.splitlines() if not line.startswith("#")]

    def hammer(n: int) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", WSGIWarning)  # wsgiref's lint dislikes odd methods
            for i in range(n):
                method = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 12)))
                if method in falcon.COMBINED_METHODS:
                    continue
                path = rng.choice([f"/api/v1/tasks/{rng.getrandbits(64):x}",
                                   f"/no/such/{rng.getrandbits(64):x}", "/healthz"])
                client.simulate_request(method, path)

    hammer(100)
    series()  # the scrape itself is a series too
    before = series()
    hammer(20_000)
    after = series()
    assert after == before
    assert any('method="OTHER"' in s for s in after)
    assert not any("/api/v1/tasks/" in s and "{task_id}" not in s for s in after)


def test_bearer_scheme_is_case_insensitive():
    c = falcon.testing.TestClient(create_app(build_deps(offline_config(token="t0ken"))))
    for header in ("bearer t0ken", "BEARER t0ken", "Bearer   t0ken"):
        # 503: past the token check, Redis (a closed port here) is down
        error_of(c.simulate_get("/api/v1/tasks/x", headers={"Authorization": header}), 503)
    for header in ("Bearer", "Basic t0ken", "Bearer t0ken2", "bearert0ken"):
        error_of(c.simulate_get("/api/v1/tasks/x", headers={"Authorization": header}), 401)


def test_bodies_over_the_route_limit_are_refused_before_reading(client):
    # submission: limit 100_000 + multipart slack; the 413 comes from Content-Length alone
    err = error_of(client.simulate_post(URL, body=b"", headers={
        "Content-Type": "multipart/form-data; boundary=x", "Content-Length": "10000000"}), 413)
    assert err["code"] == "payload_too_large"
    # JSON routes: 64 KiB
    big = b'{"filename": "a.jpg", "content_type": "image/jpeg", "pad": "' + b"x" * 70_000 + b'"}'
    error_of(client.simulate_post("/api/v1/uploads", body=big,
                                  headers={"Content-Type": "application/json"}), 413)


def test_two_file_parts_are_refused(client):
    form = multipart(files=[("file", ("a.jpg", PHOTO)), ("file", ("b.jpg", PHOTO))])
    err = error_of(client.simulate_post(URL, **form), 400)
    assert "more than one" in err["message"]


@pytest.mark.parametrize("doc, status", [
    ({"filename": "x.png\n", "content_type": "image/png"}, 400),
    ({"filename": "a\x00.png", "content_type": "image/png"}, 400),
    ({"filename": "", "content_type": "image/png"}, 400),
    ({"filename": "a" * 256, "content_type": "image/png"}, 400),
    ({"filename": "a.svg", "content_type": "image/svg+xml"}, 415),
    ({"filename": "a.png", "content_type": "image/x-png"}, 415),
    ({"filename": "a.png", "content_type": "image/png", "size": 1.5}, 400),
    ({"filename": "a.png", "content_type": "image/png", "size": True}, 400),
    ({"filename": "a.png", "content_type": "image/png", "size": 100_001}, 422),
    ({"filename": "a.png", "content_type": "image/png", "method": "PUT"}, 400),
    # valid: past validation, the task store (Redis, a closed port here) answers 503
    ({"filename": "a.png", "content_type": "image/png", "size": 1234.0}, 503),
    ({"filename": "a.png", "content_type": "image/png", "size": 1234, "method": "PUT"}, 503),
])
def test_upload_request_validation(client, doc, status):
    error_of(client.simulate_post("/api/v1/uploads", json=doc), status)


def test_too_small_open_file_limit_fails_at_start_with_one_line():
    import resource
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MASKFLOW_")}
    proc = subprocess.run([sys.executable, "-m", "maskflow.api"], env=clean, cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512)))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "api.connection_limit=1000" in lines[0], proc.stderr
