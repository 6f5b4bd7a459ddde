"""`maskflow up` with unique secrets: every path still works, Redis refuses a client without
credentials, the API and workers hold no root credential, and no secret shows in any process'
command line, any log line, /metrics, an error answer or a task record."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
import requests

from checks import PHOTOS
from conftest import REPO, make_config, wait_for_task
from maskflow.infra.ops import install
from maskflow.infra.ops.stack import Stack
from maskflow.infra.sdk.client import Client
from maskflow.infra.stores.keys import DEAD_LETTER_KEY, task_key
from maskflow.infra.stores.tasks import TaskStore, derive_task_id
from maskflow.infra.wiring.config import env_for, load_config
from maskflow.infra.wiring.connections import minio_client


def run_cli(cfg, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASKFLOW_")}
    return subprocess.run([sys.executable, "-m", "maskflow.infra.sdk.cli", *args], cwd=REPO,
                          env={**env, **env_for(cfg)}, capture_output=True, text=True, timeout=300)


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def every_cmdline() -> str:
    lines = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                lines.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass  # gone meanwhile
    return "\n".join(lines)


@pytest.fixture(scope="module")
def up(tmp_path_factory, servers):
    unique = uuid.uuid4().hex
    binaries = {"minio_bin": str(install.resolve_binary(install.MINIO, servers.cfg.stack.minio_bin))}
    cfg = make_config(tmp_path_factory.mktemp("secret-stack"),
                      minio={"access_key": f"root-{unique[:8]}", "secret_key": f"rootsecret-{unique}"},
                      api={"tokens": (f"token-{unique}",)}, stack={**binaries, "workers": 1})
    started = run_cli(cfg, "up")
    try:
        assert started.returncode == 0, started.stderr
        yield cfg, started
    finally:
        run_cli(cfg, "down")


def secrets_of(cfg) -> dict[str, str]:
    """Every secret the stack holds: the operator's, and each role's (from the credentials files)."""
    found = {"minio root secret": cfg.minio.secret_key, "api token": cfg.api.tokens[0]}
    for path in cfg.secrets_dir.rglob("*"):
        if path.is_file() and path.name in ("redis-password", "minio-secret-key", "webhook-secret"):
            found[f"{path.parent.name}/{path.name}"] = path.read_text().strip()
    # redis: admin api worker minio webhooks; minio: api worker webhooks; the webhooks' HMAC key
    assert len(found) == 2 + 5 + 3 + 1
    return found


def test_every_path_works_and_nothing_runs_as_root(up):
    cfg, _ = up
    stack = Stack(cfg)
    # Redis without credentials
    no_auth = subprocess.run(["redis-cli", "-p", str(cfg.redis.port), "PING"], capture_output=True, text=True)
    assert "NOAUTH" in no_auth.stdout + no_auth.stderr
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=cfg.redis.port).ping()
    # the API, the worker and the webhook dispatcher: their own users, no root credential in
    # their environment or config
    for name, role in (("api", "api"), ("worker-0", "worker"), ("webhooks", "webhooks")):
        env = environ_of(stack.running(name))
        text = "\n".join(f"{k}={v}" for k, v in env.items())
        assert cfg.minio.secret_key not in text and cfg.minio.access_key not in text, name
        assert not any(k.startswith("MINIO_ROOT") for k in env), name
        own = load_config(env={k: v for k, v in env.items() if k.startswith("MASKFLOW_")})
        assert own.minio.access_key == f"maskflow-{role}" and own.minio.secret_key != cfg.minio.secret_key
        assert own.redis.username == role
    # path 1: the API
    client = Client(cfg.api_url, token=cfg.api.tokens[0])
    tasks = TaskStore(stack.redis_client(), cfg)
    for task_id in (client.submit(PHOTOS / "coffee.jpg"), client.submit_presigned(PHOTOS / "rocket.jpg")):
        assert wait_for_task(tasks, task_id).status == "completed"
    # path 3: straight to MinIO with the operator's (root) keys, as mc or any S3 SDK would
    photo = (PHOTOS / "chelsea.jpg").read_bytes()
    key = "input/secrets/direct.jpg"
    minio_client(cfg).put_object(cfg.minio.bucket, key, io.BytesIO(photo), len(photo))
    assert wait_for_task(tasks, derive_task_id(cfg.minio.bucket, key)).status == "completed"


def test_no_secret_leaks(up):
    cfg, started = up
    stack = Stack(cfg)
    secrets = secrets_of(cfg)
    # provoke error answers and a failed task, then look everywhere
    bad, good = {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {cfg.api.tokens[0]}"}
    url = cfg.api_url
    answers = [
        requests.get(f"{url}/api/v1/tasks/nope", headers=bad, timeout=10),
        requests.get(f"{url}/api/v1/tasks/nope", headers=good, timeout=10),
        requests.post(f"{url}/api/v1/tasks/segmentation", headers=good, files={"file": b"not an image"}, timeout=10),
        requests.post(f"{url}/api/v1/uploads", headers=good, json={"filename": "x.png", "content_type": "image/png"},
                      timeout=10),
        requests.post(f"{url}/api/v1/tasks/segmentation", headers=good, data=b"x" * 10, timeout=10),
        requests.get(f"{url}/readyz", timeout=10),
        requests.get(f"{url}/metrics", timeout=10),
        requests.get(f"{url}/api/v1/openapi.json", headers=good, timeout=10),
    ]
    assert [a.status_code for a in answers[:5]] == [401, 404, 415, 201, 400] and answers[6].ok  # 201: a presigned POST
    key = "input/secrets/broken.jpg"
    minio_client(cfg).put_object(cfg.minio.bucket, key, io.BytesIO(b"not a jpeg"), 10)
    tasks = TaskStore(stack.redis_client(), cfg)
    failed = wait_for_task(tasks, derive_task_id(cfg.minio.bucket, key))
    assert failed.status == "failed"
    r = stack.redis_client()
    records = [str(r.hgetall(k)) for k in r.scan_iter(task_key("*"))] + [str(r.lrange(DEAD_LETTER_KEY, 0, -1))]
    assert len(records) >= 5
    logs = {p.name: p.read_text(errors="replace") for p in (cfg.data_dir / "logs").glob("*.log")}
    assert {"redis.log", "minio.log", "api.log", "worker-0.log", "webhooks.log"} <= set(logs)
    places = {"every command line": every_cmdline(), "maskflow up's output": started.stdout + started.stderr,
              **{f"log {name}": text for name, text in logs.items()},
              **{f"answer {a.request.method} {a.request.path_url}": a.text for a in answers},
              "task records and dead letters": "\n".join(records)}
    leaks = [(what, where) for what, secret in secrets.items() for where, text in places.items() if secret in text]
    assert leaks == []
