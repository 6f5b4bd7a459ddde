"""Issue 5: the HTTP contract, against a real `python -m maskflow.api` process with real Redis and MinIO.

No worker runs in this module: task transitions a worker would make are driven through
TaskStore (the same calls the worker makes), so the API's rendering of every state is checked.
"""
from __future__ import annotations

import datetime as dt
import re
import time
import urllib.parse

import pytest
import requests

from checks import PHOTOS, assert_error, presigned_expires_at
from conftest import REPO
from conftest import UPLOAD_LIMIT as LIMIT
from maskflow.infra.ops.processes import wait_until
from maskflow.infra.stores.keys import DEAD_LETTER_KEY, UPLOAD_DEADLINES, index_key
from maskflow.infra.stores.objects import PRESIGN_REUSE_S, ObjectStore
from maskflow.infra.stores.tasks import TaskStore
from maskflow.infra.stores.workers import WorkerRegistry
from maskflow.infra.wiring.config import replace

GRACE_S = 120  # api.uploads.UPLOAD_GRACE_S, restated: the test checks the contract


def photo(name: str = "chelsea.jpg") -> bytes:
    return (PHOTOS / name).read_bytes()


def parse_time(text: str) -> dt.datetime:
    assert text.endswith("Z")
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


TASK_KEYS = {"task_id", "status", "result", "error", "created_at", "completed_at"}


# -- submission --------------------------------------------------------------------------------
def test_submit_stores_the_upload_and_answers_202(api, servers, tasks):
    before = time.time()
    r = requests.post(f"{api.url}/api/v1/tasks/segmentation",
                      files={"file": ("cat.jpg", photo(), "image/jpeg")}, timeout=10)
    assert r.status_code == 202, r.text
    body = r.json()
    assert set(body) == {"task_id", "status", "created_at"}
    assert body["status"] == "pending"
    assert parse_time(body["created_at"]).timestamp() >= before - 1
    task_id = body["task_id"]
    assert r.headers["Location"].endswith(f"/api/v1/tasks/{task_id}")

    key = f"input/{task_id}.jpg"
    objects = ObjectStore(servers.cfg)
    assert objects.get(key).data == photo()
    assert objects.get(key).content_type == "image/jpeg"
    assert tasks.task_id_for_key(key) == task_id  # the index the worker resolves events with

    got = requests.get(f"{api.url}{r.headers['Location']}", timeout=10)
    assert got.status_code == 200
    task = got.json()
    assert set(task) == TASK_KEYS
    assert task["task_id"] == task_id and task["status"] == "pending"
    assert task["result"] == {"segmented_image_url": None, "mask_image_url": None}
    assert task["error"] is None and task["completed_at"] is None
    assert task["created_at"] == body["created_at"]


def test_format_is_decided_by_content_not_name(api, servers, tasks):
    r = requests.post(f"{api.url}/api/v1/tasks/segmentation",
                      files={"file": ("looks-like.jpg", photo("camera_gray.png"), "image/jpeg")},
                      timeout=10)
    assert r.status_code == 202, r.text
    key = f"input/{r.json()['task_id']}.png"
    assert ObjectStore(servers.cfg).get(key).content_type == "image/png"


def _submit(api, **kwargs) -> requests.Response:
    return requests.post(f"{api.url}/api/v1/tasks/segmentation", timeout=30, **kwargs)


def test_rejected_uploads_store_nothing(api, tasks):
    before = tasks.status_counts()
    too_big = b"\xff\xd8\xff" + b"\0" * LIMIT
    err = assert_error(_submit(api, files={"file": ("big.jpg", too_big, "image/jpeg")}), 413,
                       "payload_too_large")
    assert str(LIMIT) in err["message"]
    assert_error(_submit(api, files={"image": ("a.jpg", photo(), "image/jpeg")}), 400, "missing_file")
    assert_error(_submit(api, files=[("file", ("a.jpg", photo(), "image/jpeg")),
                                     ("file", ("b.jpg", photo(), "image/jpeg"))]), 400)
    assert_error(_submit(api, data={"note": "no file"}), 400, "missing_file")
    assert_error(_submit(api, data=b"raw bytes", headers={"Content-Type": "image/jpeg"}), 415)
    err = assert_error(_submit(api, files={"file": ("a.txt", b"hello, not an image", "text/plain")}),
                       415, "unsupported_image")
    assert "not a supported image" in err["message"]
    data = photo()
    err = assert_error(_submit(api, files={"file": ("cut.jpg", data[:len(data) // 2], "image/jpeg")}),
                       422, "invalid_image")
    assert "truncated" in err["message"]
    assert_error(_submit(api, files={"file": ("empty.jpg", b"", "image/jpeg")}), 422, "invalid_image")
    # a broken multipart body is the client's error, not ours
    assert_error(_submit(api, data=b"--x\r\nnonsense",
                         headers={"Content-Type": "multipart/form-data; boundary=x"}), 400)
    assert tasks.status_counts() == before


def test_storage_failure_fails_the_task_and_answers_503(servers, tasks):
    """The record is written before the object; when the put fails the record says so."""
    import falcon.testing

    from maskflow.api.app import build_deps, create_app
    cfg = replace(servers.cfg, minio={"bucket": "no-such-bucket-maskflow"})
    client = falcon.testing.TestClient(create_app(build_deps(cfg)))
    form = requests.Request("POST", "http://x", files={"file": ("a.jpg", photo())}).prepare()
    r = client.simulate_post("/api/v1/tasks/segmentation", body=form.body,
                             headers={"Content-Type": form.headers["Content-Type"]})
    assert r.status_code == 503, r.text
    assert r.json["error"]["code"] == "storage_unavailable"
    prefix = len(index_key(""))
    failed = [t for t in (tasks.find_by_key(k.decode()[prefix:])
                          for k in servers.redis().keys(index_key("input/*")))
              if t and t.status == "failed" and "storing the upload failed" in (t.error or "")]
    assert failed, "the pending record was not failed"


# -- reading tasks -----------------------------------------------------------------------------
def test_unknown_task_and_bad_wait(api):
    assert_error(requests.get(f"{api.url}/api/v1/tasks/nope", timeout=5), 404, "not_found")
    assert_error(requests.get(f"{api.url}/api/v1/tasks/nope?wait=31", timeout=5), 400)
    assert_error(requests.get(f"{api.url}/api/v1/tasks/nope?wait=soon", timeout=5), 400)
    assert_error(requests.get(f"{api.url}/no/such/route", timeout=5), 404, "not_found")
    assert_error(requests.delete(f"{api.url}/api/v1/tasks/x", timeout=5), 405)


def test_wait_holds_until_terminal_or_timeout(api, tasks):
    task_id = "waittest" + str(time.monotonic_ns())
    tasks.create_pending(task_id, f"input/{task_id}.jpg")
    started = time.monotonic()
    r = requests.get(f"{api.url}/api/v1/tasks/{task_id}?wait=1", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "pending"
    assert 0.9 <= time.monotonic() - started < 5

    # a task that finishes while the request waits is answered at once
    tasks.fail_pending(task_id, "boom")
    started = time.monotonic()
    r = requests.get(f"{api.url}/api/v1/tasks/{task_id}?wait=30", timeout=35)
    assert r.json()["status"] == "failed"
    assert time.monotonic() - started < 5


def test_completed_and_failed_tasks_render_like_the_contract(api, servers, tasks):
    objects = ObjectStore(servers.cfg)
    task_id = "done" + str(time.monotonic_ns())
    key = f"input/{task_id}.jpg"
    tasks.create_pending(task_id, key)
    assert tasks.begin(task_id, key, "etag", "1", "test-worker", "run-1")[0] == "start"
    objects.put(f"output/{task_id}.png", b"segmented", "image/png")
    objects.put(f"masks/{task_id}.png", b"mask", "image/png")
    assert tasks.complete(task_id, "1", {"output": f"output/{task_id}.png", "mask": f"masks/{task_id}.png"})

    asked = time.time()
    task = requests.get(f"{api.url}/api/v1/tasks/{task_id}", timeout=5).json()
    assert set(task) == TASK_KEYS and task["status"] == "completed" and task["error"] is None
    parse_time(task["completed_at"])
    result = task["result"]
    assert requests.get(result["segmented_image_url"], timeout=5).content == b"segmented"
    assert requests.get(result["mask_image_url"], timeout=5).content == b"mask"
    for url in result.values():  # valid for api.presign_expiry (3600 s) from when it was handed out
        assert asked + 3600 - 1 <= presigned_expires_at(url) <= time.time() + 3600 + PRESIGN_REUSE_S

    failed_id = "failed" + str(time.monotonic_ns())
    tasks.create_pending(failed_id, f"input/{failed_id}.jpg")
    tasks.begin(failed_id, f"input/{failed_id}.jpg", "e", "1", "test-worker", "run-1")
    tasks.fail(failed_id, "1", "image is corrupt")
    task = requests.get(f"{api.url}/api/v1/tasks/{failed_id}", timeout=5).json()
    assert task["status"] == "failed" and task["error"] == "image is corrupt"
    assert task["result"] == {"segmented_image_url": None, "mask_image_url": None}
    parse_time(task["completed_at"])


# -- presigned uploads -------------------------------------------------------------------------
def _presign(api, **body) -> dict:
    r = requests.post(f"{api.url}/api/v1/uploads", json=body, timeout=5)
    assert r.status_code == 201, r.text
    out = r.json()
    assert r.headers["Location"].endswith(f"/api/v1/tasks/{out['task_id']}")
    return out


def test_presigned_post_lands_at_the_pinned_key(api, servers, tasks):
    before = time.time()
    up = _presign(api, filename="cat.JPG", content_type="image/jpeg", size=len(photo()))
    assert up["method"] == "POST" and up["object_key"] == f"input/{up['task_id']}.jpg"
    assert up["fields"]["key"] == up["object_key"]
    expires = parse_time(up["expires_at"]).timestamp()
    assert abs(expires - (before + servers.cfg.api.presign_expiry)) < 5
    # the task exists before the upload, with the upload deadline set
    task = requests.get(f"{api.url}/api/v1/tasks/{up['task_id']}", timeout=5).json()
    assert task["status"] == "pending"
    deadline = servers.redis().zscore(UPLOAD_DEADLINES, up["task_id"])
    assert deadline == pytest.approx(expires + GRACE_S, abs=2)

    r = requests.post(up["url"], data=up["fields"], files={"file": ("cat.jpg", photo(), "image/jpeg")},
                      timeout=10)
    assert r.status_code in (200, 201, 204), r.text
    assert ObjectStore(servers.cfg).get(up["object_key"]).data == photo()
    found = requests.get(f"{api.url}/api/v1/tasks", params={"key": up["object_key"]}, timeout=5)
    assert found.status_code == 200 and found.json()["task_id"] == up["task_id"]


def test_minio_rejects_uploads_outside_the_policy(api, servers):
    objects = ObjectStore(servers.cfg)
    up = _presign(api, filename="cat.jpg", content_type="image/jpeg")

    other = dict(up["fields"], key=up["object_key"].replace(".jpg", "-other.jpg"))
    r = requests.post(up["url"], data=other, files={"file": ("c.jpg", photo(), "image/jpeg")}, timeout=10)
    assert r.status_code == 403, r.text
    assert not objects.exists(other["key"])

    text = dict(up["fields"], **{"Content-Type": "text/plain"})
    r = requests.post(up["url"], data=text, files={"file": ("c.txt", b"hello", "text/plain")}, timeout=10)
    assert r.status_code == 403, r.text
    # the declared type exactly, not any image/*
    png = dict(up["fields"], **{"Content-Type": "image/png"})
    r = requests.post(up["url"], data=png, files={"file": ("c.png", photo(), "image/png")}, timeout=10)
    assert r.status_code == 403, r.text

    r = requests.post(up["url"], data=up["fields"],
                      files={"file": ("big.jpg", b"\xff" * (LIMIT + 1), "image/jpeg")}, timeout=30)
    assert r.status_code == 400 and "EntityTooLarge" in r.text, r.text
    assert not objects.exists(up["object_key"])


def test_presigned_put_admits_only_the_declared_size_and_type(api, servers):
    objects = ObjectStore(servers.cfg)
    data = photo("camera_gray.png")
    up = _presign(api, filename="logo.png", content_type="image/png", method="PUT", size=len(data))
    assert up["method"] == "PUT" and "fields" not in up
    assert up["headers"] == {"Content-Type": "image/png", "Content-Length": str(len(data))}
    url = up["url"]
    png = {"Content-Type": "image/png"}
    refused = [  # (what MinIO answers, the request)
        (403, requests.put(url, data=data + b"\0", headers=png, timeout=10)),
        (403, requests.put(url, data=b"\xff" * (LIMIT + 1), headers=png, timeout=30)),
        (403, requests.put(url, data=data[:-1], headers=png, timeout=10)),
        (403, requests.put(url, data=data, headers={"Content-Type": "image/svg+xml"}, timeout=10)),
        (400, requests.put(url, data=data, timeout=10)),  # no Content-Type: "not signed"
        (411, requests.put(url, data=iter([data]), headers=png, timeout=10)),  # chunked
    ]
    for status, r in refused:
        assert r.status_code == status, (r.request.headers, r.text)
    assert not objects.exists(up["object_key"])

    r = requests.put(url, data=data, headers=up["headers"], timeout=10)
    assert r.status_code == 200, r.text
    stored = objects.get(up["object_key"])
    assert stored.data == data and stored.content_type == "image/png"


def test_presign_errors(api):
    url = f"{api.url}/api/v1/uploads"
    assert_error(requests.post(url, json={"filename": "a.txt", "content_type": "text/plain"}, timeout=5),
                 415, "unsupported_media_type")
    assert_error(requests.post(url, json={"filename": "a.svg", "content_type": "image/svg+xml"},
                               timeout=5), 415, "unsupported_media_type")
    assert_error(requests.post(url, json={"filename": "a.jpg", "content_type": "image/jpeg",
                                          "size": LIMIT + 1}, timeout=5), 422, "file_too_large")
    assert_error(requests.post(url, json={"filename": "x.png\n", "content_type": "image/png"},
                               timeout=5), 400)
    assert_error(requests.post(url, json={"filename": "a.png", "content_type": "image/png",
                                          "method": "PUT"}, timeout=5), 400)
    assert_error(requests.post(url, json={"content_type": "image/jpeg"}, timeout=5), 400)
    # the schema's size is an integer: an explicit null is not "no size" (schemathesis found it)
    assert_error(requests.post(url, json={"filename": "a.jpg", "content_type": "image/jpeg",
                                          "size": None}, timeout=5), 400)
    assert_error(requests.post(url, json={"filename": "a.jpg", "content_type": "image/jpeg",
                                          "method": "DELETE"}, timeout=5), 400)
    assert_error(requests.post(url, data=b"{not json", headers={"Content-Type": "application/json"},
                               timeout=5), 400)
    assert_error(requests.post(url, json=["a"], timeout=5), 400)
    # a JSON number with a zero fraction is an integer
    up = _presign(api, filename="a.png", content_type="image/png", size=267034.0)
    assert up["object_key"].endswith(".png")


def test_upload_that_never_arrives_fails(api, tasks):
    up = _presign(api, filename="never.jpg", content_type="image/jpeg")
    deadline = parse_time(up["expires_at"]).timestamp() + GRACE_S
    assert up["task_id"] not in tasks.expire_overdue(now=deadline - 5)
    assert up["task_id"] in tasks.expire_overdue(now=deadline + 1)
    task = requests.get(f"{api.url}/api/v1/tasks/{up['task_id']}", timeout=5).json()
    assert task["status"] == "failed" and task["error"] == "upload not received"


# -- lookups ---------------------------------------------------------------------------------------
def test_lookup_by_key(api, tasks, unique_prefix):
    key = f"input/{unique_prefix}/direct photo+1.jpg"
    tasks.create_pending("lookup" + unique_prefix, key)
    r = requests.get(f"{api.url}/api/v1/tasks", params={"key": key}, timeout=5)
    assert r.status_code == 200 and set(r.json()) == TASK_KEYS
    assert r.json()["task_id"] == "lookup" + unique_prefix
    assert_error(requests.get(f"{api.url}/api/v1/tasks", params={"key": "input/none.jpg"}, timeout=5),
                 404, "not_found")
    assert_error(requests.get(f"{api.url}/api/v1/tasks", timeout=5), 400)


def test_batch_summary_and_pagination(api, tasks, unique_prefix):
    prefix = f"input/{unique_prefix}/b1/"
    keys = [f"{prefix}img-{i}.jpg" for i in range(5)] + [f"{prefix}sub/img-{i}.jpg" for i in range(2)]
    for i, key in enumerate(keys):
        tasks.create_pending(f"{unique_prefix}-{i}", key)
    tasks.fail_pending(f"{unique_prefix}-1", "image is corrupt")
    tasks.fail_pending(f"{unique_prefix}-5", "not an image")

    for path in (prefix, urllib.parse.quote(prefix, safe=""), prefix.rstrip("/")):
        r = requests.get(f"{api.url}/api/v1/batches/{path}", timeout=5)
        assert r.status_code == 200, (path, r.text)
        body = r.json()
        assert body["prefix"] == prefix and body["total"] == 7 and body["done"] == 2
        assert body["counts"] == {"pending": 5, "processing": 0, "completed": 0, "failed": 2}
        assert body["failures_total"] == 2
        assert {(f["key"], f["error"]) for f in body["failures"]} == {
            (keys[1], "image is corrupt"), (keys[5], "not an image")}

    sub = requests.get(f"{api.url}/api/v1/batches/{prefix}sub/", timeout=5).json()
    assert sub["total"] == 2 and sub["counts"]["failed"] == 1

    first = requests.get(f"{api.url}/api/v1/batches/{prefix}?limit=1", timeout=5).json()
    second = requests.get(f"{api.url}/api/v1/batches/{prefix}?limit=1&offset=1", timeout=5).json()
    assert len(first["failures"]) == len(second["failures"]) == 1
    assert first["failures"][0]["key"] != second["failures"][0]["key"]
    assert (first["offset"], first["limit"], second["offset"]) == (0, 1, 1)

    assert_error(requests.get(f"{api.url}/api/v1/batches/input/nothing-here/", timeout=5), 404)
    assert_error(requests.get(f"{api.url}/api/v1/batches/{prefix}?limit=0", timeout=5), 400)
    assert_error(requests.get(f"{api.url}/api/v1/batches/{prefix}?offset=x", timeout=5), 400)


# -- operations ------------------------------------------------------------------------------
def test_health_ready_and_static(api):
    assert requests.get(f"{api.url}/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(f"{api.url}/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "checks": {"redis": "ok", "minio": "ok"}}
    index = REPO / "api" / "static" / "index.html"
    home = requests.get(f"{api.url}/", timeout=5)
    if index.exists():
        assert home.status_code == 200 and home.headers["Content-Type"].startswith("text/html")
    else:
        assert_error(home, 404)
    assert_error(requests.get(f"{api.url}/static/..%2F..%2Finfra%2Fconfig.py", timeout=5), 404)


def test_metrics(api, servers):
    requests.get(f"{api.url}/api/v1/tasks/nope", timeout=5)
    # a worker's heartbeat hash, written the way workers write it
    worker = WorkerRegistry(servers.redis(), "metrics-test-worker", "run", servers.cfg.worker.lease)
    worker.beat(processed=7, failed=2, busy_seconds=3.5, duration_bucket_1=5,
                     **{"duration_bucket_+Inf": 7}, duration_sum=4.5, duration_count=7)
    try:
        r = requests.get(f"{api.url}/metrics", timeout=5)
    finally:
        worker.retire()
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    lines = set(r.text.splitlines())
    assert any(line.startswith('maskflow_http_requests_total{method="GET",'
                               'route="/api/v1/tasks/{task_id}",status="404"} ') for line in lines)
    assert any(line.startswith('maskflow_tasks{status="pending"} ') for line in lines)
    assert any(line.startswith("maskflow_queue_depth ") for line in lines)
    assert 'maskflow_worker_processed_total{worker="metrics-test-worker"} 7' in lines
    assert 'maskflow_processing_seconds_bucket{le="1"} 5' in lines
    assert 'maskflow_processing_seconds_bucket{le="+Inf"} 7' in lines
    assert "maskflow_processing_seconds_count 7" in lines
    assert "maskflow_redis_up 1" in lines

    def dead_letters() -> int:
        text = requests.get(f"{api.url}/metrics", timeout=5).text
        return int(next(line.split()[1] for line in text.splitlines()
                        if line.startswith("maskflow_dead_letters ")))

    r = servers.redis()
    before = dead_letters()
    assert before == r.llen(DEAD_LETTER_KEY)
    r.rpush(DEAD_LETTER_KEY, b"metrics-test")
    try:
        assert dead_letters() == before + 1
    finally:
        r.lrem(DEAD_LETTER_KEY, 1, b"metrics-test")


# -- access ----------------------------------------------------------------------------------
def test_bearer_token(start_app):
    url = start_app(api={"token": "s3cret-token"}).url
    err = assert_error(requests.get(f"{url}/api/v1/tasks/x", timeout=5), 401, "unauthorized")
    assert "token" in err["message"]
    r = requests.get(f"{url}/api/v1/tasks/x", headers={"Authorization": "Bearer wrong"}, timeout=5)
    assert_error(r, 401)
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert_error(requests.post(f"{url}/api/v1/tasks/segmentation",
                               files={"file": ("a.jpg", photo())}, timeout=5), 401)
    assert_error(requests.get(f"{url}/api/v1/openapi.json", timeout=5), 401)
    auth = {"Authorization": "Bearer s3cret-token"}
    assert_error(requests.get(f"{url}/api/v1/tasks/x", headers=auth, timeout=5), 404)
    lower = {"Authorization": "bearer s3cret-token"}  # RFC 7235: scheme is case-insensitive
    assert_error(requests.get(f"{url}/api/v1/tasks/x", headers=lower, timeout=5), 404)
    assert requests.get(f"{url}/api/v1/openapi.json", headers=auth, timeout=5).status_code == 200
    # operations and the web page stay open
    for path in ("/healthz", "/readyz", "/metrics"):
        assert requests.get(f"{url}{path}", timeout=5).status_code == 200, path
    assert requests.get(f"{url}/", timeout=5).status_code in (200, 404)


def test_long_polls_never_take_every_thread(servers, start_app):
    """With 2 threads, one request may long-poll; a second long-poll is answered at once."""
    from concurrent.futures import ThreadPoolExecutor

    app = start_app(api={"threads": 2})
    task = TaskStore(servers.redis(), servers.cfg).create_pending("waitcap", "input/waitcap.jpg")
    url = f"{app.url}/api/v1/tasks/{task.task_id}?wait=4"
    with ThreadPoolExecutor(2) as pool:
        holder = pool.submit(requests.get, url, timeout=10)
        wait_until(lambda: _long_polls(app.url) >= 1, "first long-poll waiting", 5)
        started = time.monotonic()
        second = requests.get(url, timeout=10)
        answered_in = time.monotonic() - started
        first = holder.result()
    assert second.status_code == first.status_code == 200
    assert second.json()["status"] == "pending" and answered_in < 2.0, answered_in
    assert requests.get(f"{app.url}/healthz", timeout=2).status_code == 200


def _long_polls(url: str) -> int:
    """The long-polls holding an API thread right now, as /metrics reports them."""
    metrics = requests.get(f"{url}/metrics", timeout=2).text
    return int(re.search(r"^maskflow_long_polls (\d+)$", metrics, re.M).group(1))


@pytest.mark.parametrize("query", ["after=", "prefix=", "after=&prefix=", "after=18446744073709551616",
                                   "after=abc", "prefix=output/", "after=0&after=1"])
def test_results_refuse_a_blank_or_impossible_query_with_a_400(api, query):
    """A blank value is not the default, and an id past Redis' 64 bits is not Redis' 500."""
    assert_error(requests.get(f"{api.url}/api/v1/results?{query}", timeout=10), 400)


def test_results_page_from_the_start(api):
    page = requests.get(f"{api.url}/api/v1/results", params={"after": "0", "limit": 5}, timeout=10)
    assert page.status_code == 200 and set(page.json()) == {"entries", "next"}, page.text
