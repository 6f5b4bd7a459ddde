"""TLS on every hop but one: a stack whose Redis serves only its TLS port and whose MinIO serves
only HTTPS, both with certificates of a CA made here (trustme), and an upload pushed through
to its mask.

    client -> API            plain HTTP: waitress cannot serve TLS (put a reverse proxy in front)
    client -> MinIO          HTTPS (the presigned URLs, a direct upload)
    API, worker -> MinIO     HTTPS, MinIO's certificate checked against minio.ca_file
    API, worker -> Redis     TLS, Redis' certificate checked against redis.ca_file
    MinIO -> Redis           MinIO's Redis target has no TLS: stunnel beside MinIO, on loopback,
                             speaks TLS to Redis and checks its certificate (infra/ops/tunnel.py)

A CA that did not sign the servers' certificates fails with one clear line.
"""
from __future__ import annotations

import io
import subprocess
import sys

import pytest
import redis
import requests
import trustme
import urllib3

from checks import PHOTOS, png, start_worker
from conftest import app_stack, wait_for_task
from maskflow.infra.ops import roles
from maskflow.infra.ops.processes import StackError, free_port
from maskflow.infra.ops.stack import Stack
from maskflow.infra.stores.tasks import TaskStore, derive_task_id
from maskflow.infra.wiring.config import replace
from maskflow.infra.wiring.connections import minio_client


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    root = tmp_path_factory.mktemp("certs")
    ca, stranger = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    (root / "server").mkdir()
    server.private_key_pem.write_to_path(root / "server" / "private.key")
    server.cert_chain_pems[0].write_to_path(root / "server" / "public.crt")
    ca.cert_pem.write_to_path(root / "ca.pem")
    stranger.cert_pem.write_to_path(root / "wrong-ca.pem")
    return root


@pytest.fixture(scope="module")
def tls_stack(certs, tmp_path_factory):
    ca = str(certs / "ca.pem")
    with app_stack(tmp_path_factory.mktemp("tls"), workers=1,
                   redis={"tls": True, "ca_file": ca}, minio={"secure": True, "ca_file": ca},
                   stack={"certs_dir": str(certs / "server")}) as app:
        yield app


def test_an_upload_becomes_a_mask_over_tls(tls_stack, certs):
    cfg, ca = tls_stack.cfg, str(certs / "ca.pem")
    photo = (PHOTOS / "chelsea.jpg").read_bytes()
    # through the API (plain HTTP to the API, TLS behind it)
    response = requests.post(f"{tls_stack.url}/api/v1/tasks/segmentation",
                             files={"file": ("chelsea.jpg", photo, "image/jpeg")}, timeout=30)
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    tasks = TaskStore(tls_stack.redis_client(), cfg)
    assert wait_for_task(tasks, task_id).status == "completed"
    body = requests.get(f"{tls_stack.url}/api/v1/tasks/{task_id}", timeout=10).json()
    for url in body["result"].values():
        assert url.startswith(f"https://{cfg.minio.endpoint}/")
        png(requests.get(url, verify=ca, timeout=10).content)
    # straight to MinIO over HTTPS: the event goes MinIO -> stunnel -> Redis' TLS port
    key = "input/tls/direct.jpg"
    minio_client(cfg).put_object(cfg.minio.bucket, key, io.BytesIO(photo), len(photo), content_type="image/jpeg")
    assert wait_for_task(tasks, derive_task_id(cfg.minio.bucket, key)).status == "completed"
    assert requests.get(f"{tls_stack.url}/readyz", timeout=5).json()["status"] == "ready"


def test_no_plain_listener_is_left(tls_stack, certs):
    cfg = tls_stack.cfg
    admin = tls_stack.redis_client()
    assert admin.config_get("port") == {"port": "0"}
    assert admin.config_get("tls-port") == {"tls-port": str(cfg.redis.port)}
    plain = redis.Redis(port=cfg.redis.port, socket_timeout=2, socket_connect_timeout=2, retry=None)
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    response = requests.get(f"http://{cfg.minio.endpoint}/minio/health/ready", timeout=5)
    assert response.status_code == 400 and "HTTPS" in response.text  # "an HTTP request to an HTTPS server"
    # MinIO's targets reach Redis only through the tunnel, which speaks TLS to the TLS port
    env = tls_stack.minio_env()
    address = env[f"MINIO_NOTIFY_REDIS_ADDRESS_{cfg.queue.target_id}"]
    assert address != f"{cfg.redis.host}:{cfg.redis.port}"
    tunnel_conf = (tls_stack.data_dir / "redis-tunnel.conf").read_text()
    assert f"accept = {address}" in tunnel_conf and f"connect = {cfg.redis.host}:{cfg.redis.port}" in tunnel_conf
    assert "verifyChain = yes" in tunnel_conf and f"CAfile = {cfg.redis.ca_file}" in tunnel_conf


def test_a_wrong_ca_fails_with_one_clear_line(tls_stack, certs, tmp_path):
    wrong = str(certs / "wrong-ca.pem")
    cfg = replace(tls_stack.cfg, redis={"ca_file": wrong}, minio={"ca_file": wrong})
    # the stack's own probe, as `maskflow up` runs it against servers already started
    with pytest.raises(StackError, match=r"TLS to Redis at 127\.0\.0\.1:\d+: its certificate is not signed "
                                         r"by a CA that redis\.ca_file=.*wrong-ca\.pem holds"):
        Stack(cfg).start(Stack(cfg).redis_service)
    # the worker and the API stop at once, saying so
    worker = start_worker(cfg, "wrong-ca", stderr=subprocess.PIPE, text=True)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 2 and "TLS to Redis" in err and "wrong-ca.pem" in err, err
    api_cfg = replace(cfg, api={"port": free_port()}, redis={"ca_file": str(certs / "ca.pem")})
    api = subprocess.run([sys.executable, "-m", "maskflow.api"], capture_output=True, text=True, timeout=60,
                         env=roles.service_env(api_cfg, "api", roles.Credentials(api_cfg.secrets_dir)))
    assert api.returncode == 2 and "TLS to MinIO at" in api.stderr and "minio.ca_file" in api.stderr, api.stderr
    # a client checking MinIO against the wrong CA
    with pytest.raises(urllib3.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        minio_client(cfg).bucket_exists(cfg.minio.bucket)
