"""Issue 28 end to end, as real processes (API, workers, the webhook dispatcher) on the real
Redis and MinIO: `maskflow watch` follows a 200-photo `mc mirror` drop in one request, and a
task's callback_url gets the signed task from every intake path."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import requests

from checks import PHOTOS, make_photos
from conftest import REPO
from receiver import receiving
from maskflow.infra.domain import signatures
from maskflow.infra.ops.processes import wait_until
from maskflow.infra.wiring.config import env_for

TOKEN = "results-test-token"
SECRET = "results-test-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOOKS = {"secret": SECRET, "allow_hosts": ("127.0.0.1",), "allow_insecure": True, "backoff": 0.1}


def requests_by_route(api_url: str) -> dict[str, int]:
    """The API's own count of the requests it served, by route (its /metrics)."""
    text = requests.get(f"{api_url}/metrics", timeout=10).text
    counts: dict[str, int] = {}
    for route, n in re.findall(r'maskflow_http_requests_total\{method="GET",route="([^"]+)",status="\d+"\} (\d+)',
                               text):
        counts[route] = counts.get(route, 0) + int(n)
    return counts


def test_watch_follows_a_200_photo_mirror_without_polling(start_app, clean_redis, mc, tmp_path, unique_prefix):
    app = start_app(workers=2, api={"token": TOKEN})
    folder = tmp_path / "drop"
    make_photos(folder, 200, 64)
    prefix = f"input/{unique_prefix}/drop/"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MASKFLOW_")}, **env_for(app.cfg),
           "MASKFLOW_API_TOKEN": TOKEN}
    watch = subprocess.Popen([sys.executable, "-m", "maskflow.infra.sdk.cli", "watch", prefix, "--json",
                              "--expect", "200"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(watch.stdout.readline())  # connected: the batch as it stands
        assert first["event"] == "batch" and first["done"] == 0
        mc("mirror", str(folder), f"local/{app.cfg.minio.bucket}/{prefix}")
        out, err = watch.communicate(timeout=300)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
    assert watch.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    finished = [e for e in events if e["event"] == "result"]
    assert sorted(e["input_key"] for e in finished) == sorted(f"{prefix}img-{i:03d}.jpg" for i in range(200))
    assert all(e["status"] == "completed" and e["output_key"] and e["mask_key"] for e in finished)
    assert finished[-1]["batch"]["done"] == 200 and finished[-1]["batch"]["total"] == 200
    assert "callback_url" not in finished[0]
    # one request for the whole batch: no polling of the batch or task routes
    served = requests_by_route(app.url)
    assert served.get("/api/v1/results") == 1, served
    assert not any(route.startswith(("/api/v1/batches", "/api/v1/tasks")) for route in served), served
    # and the JSON page of the same stream
    page = requests.get(f"{app.url}/api/v1/results", params={"after": "0", "prefix": prefix, "limit": 1000},
                        headers=AUTH, timeout=10).json()
    assert len(page["entries"]) == 200 and page["batch"]["done"] == 200 and page["next"]


def test_every_intake_path_reaches_the_callback_signed(start_app, clean_redis, objects, tmp_path, unique_prefix):
    with receiving() as receiver:
        app = start_app(workers=1, webhook=HOOKS)
        app.start(app.webhooks_service)
        photo = (PHOTOS / "rocket.jpg").read_bytes()
        # 1. the API's form field
        submitted = requests.post(f"{app.url}/api/v1/tasks/segmentation", files={"file": ("a.jpg", photo)},
                                  data={"callback_url": receiver.url}, timeout=30)
        assert submitted.status_code == 202, submitted.text
        task_id = submitted.json()["task_id"]
        # 2. the presign binding: the URL is signed into the upload
        upload = requests.post(f"{app.url}/api/v1/uploads", json={
            "filename": "b.jpg", "content_type": "image/jpeg", "callback_url": receiver.url}, timeout=30).json()
        posted = requests.post(upload["url"], data=upload["fields"], files={"file": ("b.jpg", photo)}, timeout=30)
        assert posted.status_code in (200, 204), posted.text
        # 3. object metadata, and a bad one there: a failed task that says why
        objects.put(f"input/{unique_prefix}/c.jpg", photo, "image/jpeg", {"callback-url": receiver.url})
        objects.put(f"input/{unique_prefix}/bad.jpg", photo, "image/jpeg", {"callback-url": "ftp://x.example/"})
        got = receiver.wait_for(3, timeout=120)
        bodies = {json.loads(r.body)["task_id"]: r for r in got}
        assert task_id in bodies and upload["task_id"] in bodies
        for r in got:
            assert signatures.verify(SECRET, r.body, r.headers[signatures.HEADER])
        task = wait_until(lambda: (t := requests.get(f"{app.url}/api/v1/tasks/{task_id}", timeout=10).json())
                          ["callback"]["status"] == "delivered" and t, "the delivery recorded", 30)
        sent = json.loads(bodies[task_id].body)
        assert {k: v for k, v in sent.items() if k not in ("callback", "result")} == \
            {k: v for k, v in task.items() if k not in ("callback", "result")}
        assert task["callback"] == {"status": "delivered", "attempts": 1, "last_error": None}
        bad = wait_until(lambda: (t := requests.get(f"{app.url}/api/v1/tasks", timeout=10, params={
            "key": f"input/{unique_prefix}/bad.jpg"}).json()).get("status") == "failed" and t, "bad one failed", 60)
        assert "callback_url must be https" in bad["error"]
        # the API refuses a bad one at once
        refused = requests.post(f"{app.url}/api/v1/tasks/segmentation", files={"file": ("a.jpg", photo)},
                                data={"callback_url": "https://169.254.169.254/"}, timeout=30)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "bad_callback_url"
        metrics = requests.get(f"{app.url}/metrics", timeout=10).text
        assert re.search(r'maskflow_webhook_deliveries_total\{outcome="delivered"\} [3-9]', metrics), metrics
        assert re.search(r"maskflow_results_stream_length [1-9]", metrics)
