"""`maskflow up` / `down` as a user runs them: ready when it returns, idempotent, clean errors."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from conftest import REPO, make_config
from maskflow.infra.ops import install
from maskflow.infra.wiring.config import env_for, replace


def run_cli(cfg, *args: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASKFLOW_")}
    env.update(env_for(cfg))
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", "maskflow.infra.sdk.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)


def pids_under(data_dir: Path) -> list[int]:
    """Processes whose command line or working files point into this stack's data dir."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            environ = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(data_dir) in cmdline or f"MASKFLOW_STACK_DATA_DIR={data_dir}" in environ:
            found.append(int(proc.name))
    return found


@pytest.fixture
def binaries(servers):
    """The same MinIO binary the session uses (pinned build, or the configured override)."""
    return {"minio_bin": str(install.resolve_binary(install.MINIO, servers.cfg.stack.minio_bin))}


def test_up_twice_then_down_leaves_nothing(tmp_path, binaries):
    cfg = make_config(tmp_path / "stack", stack={**binaries, "workers": 1})
    first = run_cli(cfg, "up")
    assert first.returncode == 0, first.stderr
    assert f"http://{cfg.minio.endpoint}" in first.stdout and cfg.api_url in first.stdout
    # ready means ready: the API answers and the worker has reported in, right now
    assert requests.get(f"{cfg.api_url}/readyz", timeout=5).status_code == 200
    second = run_cli(cfg, "up")
    assert second.returncode == 0, second.stderr
    assert second.stderr.count("already running") == 5  # redis minio api webhooks worker-0
    down = run_cli(cfg, "down")
    assert down.returncode == 0 and "worker-0" in down.stdout and "minio" in down.stdout
    assert pids_under(tmp_path / "stack") == []
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{cfg.api_url}/healthz", timeout=2)


def test_port_taken_stops_with_one_line_and_nothing_left(tmp_path, binaries):
    cfg = make_config(tmp_path / "stack", stack=binaries)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(cfg.minio.endpoint.rsplit(":", 1)[1])))
        squatter.listen()
        result = run_cli(cfg, "up")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("maskflow: ") and "starting" not in line]
    assert len(lines) == 1 and "already in use" in lines[0] and "Traceback" not in result.stderr
    assert pids_under(tmp_path / "stack") == [], "redis, started first, must be stopped again"


def test_wrong_credentials_say_what_to_do(servers, tmp_path):
    cfg = replace(servers.cfg, minio={"secret_key": "not-the-password"})
    result = run_cli(cfg, "up", "--servers-only")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("maskflow: MinIO at ")
    assert "MASKFLOW_MINIO_SECRET_KEY" in result.stderr and "Traceback" not in result.stderr


def test_missing_go_toolchain_says_what_to_do(tmp_path):
    cfg = make_config(tmp_path / "stack")
    cfg = replace(cfg, stack={"minio_bin": ""})
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "XDG_CACHE_HOME": str(tmp_path / "empty-cache")}
    if any(Path(d, "go").exists() for d in env["PATH"].split(":")):
        pytest.skip("go is installed system-wide here")
    result = run_cli(cfg, "up", extra_env=env)
    assert result.returncode == 2
    assert "no Go toolchain on PATH" in result.stderr and "Traceback" not in result.stderr
    assert pids_under(tmp_path / "stack") == []


def test_up_starts_a_pool_for_the_heavy_models_and_each_task_ends_on_its_pool(tmp_path, binaries):
    # the layout `maskflow up` gives by default: the light models on one worker per core (one
    # here), u2net and portrait on a worker of their own
    cfg = make_config(tmp_path / "stack", stack={**binaries, "workers": 1, "heavy_workers": 1},
                      worker={"models": ()})
    try:
        up = run_cli(cfg, "up")
        assert up.returncode == 0, up.stderr
        assert "worker-0  serving person, general" in up.stdout
        assert "worker-heavy-0  serving u2net, portrait" in up.stdout
        listed = requests.get(f"{cfg.api_url}/api/v1/models", timeout=5).json()["models"]
        assert {m["name"]: m["workers"] for m in listed} == {"person": 1, "general": 1, "u2net": 1, "portrait": 1}
        photo = REPO / "tests" / "fixtures" / "photos" / "astronaut.jpg"
        for model in ("portrait", "person"):
            done = run_cli(cfg, "submit", str(photo), "--model", model, "--out", str(tmp_path / model))
            assert done.returncode == 0, done.stderr
            assert (tmp_path / model / "astronaut.mask.png").stat().st_size > 1000
    finally:
        assert run_cli(cfg, "down").returncode == 0
    assert pids_under(tmp_path / "stack") == []
