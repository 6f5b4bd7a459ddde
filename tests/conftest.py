"""Shared fixtures: a private Redis and MinIO for the test session, on free loopback ports.

The servers are the real ones (infra/ops/install.py builds or finds them); nothing here collides
with a dev stack on the default ports, and everything started is stopped at the end.
A server that cannot be installed or started is an error of every test that needs it, never
a skip: those tests are what shows the product works.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from maskflow.infra.domain.catalog import CATALOG, DEFAULT, GENERAL
from maskflow.infra.ops import install
from maskflow.infra.ops.processes import StackError, free_port, wait_until
from maskflow.infra.ops.stack import Stack
from maskflow.infra.wiring.config import Config, load_config, replace

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"


def pytest_addoption(parser):
    parser.addoption("--require-integration", action="store_true",
                     help="fail the run when no integration test was executed (CI)")


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


_integration_executed = 0


def pytest_runtest_logreport(report):
    global _integration_executed
    if report.when == "call" and "integration" in report.keywords:
        _integration_executed += 1


def pytest_sessionfinish(session, exitstatus):
    if session.config.getoption("--require-integration") and _integration_executed == 0:
        print("\nmaskflow: no integration test was executed; failing the run", flush=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def make_config(data_dir: Path, **overrides) -> Config:
    base = load_config(env={k: v for k, v in os.environ.items()
                            if k in ("MASKFLOW_STACK_MINIO_BIN", "MASKFLOW_STACK_MC_BIN")})
    sections = {
        "redis": {"port": free_port()},
        # The repository's files by absolute path, so a test may run a command from anywhere.
        "minio": {"endpoint": f"127.0.0.1:{free_port()}", "bucket": "ai-segmentation",
                  "notify_file": str(REPO / "minio-notify.json")},
        "model": {"path": str(REPO / "models" / "segmentation.onnx")},
        "api": {"port": free_port()},
        # No heavy pool unless a test asks for one (test_stack's `maskflow up` does).  The
        # credentials stay the servers' when a test's own API and workers get a data_dir.
        "stack": {"data_dir": str(data_dir), "secrets_dir": str(data_dir / "secrets"), "heavy_workers": 0},
        # Short leases so a killed worker's events come back within seconds in tests; the
        # light models only, unless a test asks for more (u2net alone is 176 MB a process).
        "worker": {"heartbeat": 1, "lease": 3, "models": (DEFAULT, GENERAL)},
    }
    for section, keys in overrides.items():
        sections.setdefault(section, {}).update(keys)
    return replace(base, **sections)


@dataclass
class Servers:
    cfg: Config
    stack: Stack

    def redis(self) -> redis.Redis:
        return self.stack.redis_client()


@pytest.fixture(scope="session")
def servers(tmp_path_factory) -> Iterator[Servers]:
    """The shared Redis + MinIO (with their users per role), the durable notification target only: the tests on it
    count events or inject faults into one delivery, so each upload gives exactly one event.
    Both targets together (the default) are tested on stacks of their own."""
    cfg = make_config(tmp_path_factory.mktemp("stack"), queue={"fast_target_id": ""})
    stack = Stack(cfg)
    stack.up(app=False)
    try:
        # The tests' own view is an admin's: MinIO's root user and Redis' admin user.  What a
        # test starts gets its role's credentials (Stack.service_config, checks.start_worker).
        yield Servers(stack.admin_cfg, stack)
    finally:
        stack.down()


class App(Stack):
    """Processes a test started for itself; `url` is their API's."""

    @property
    def url(self) -> str:
        return self.cfg.api_url


@contextlib.contextmanager
def app_stack(data_dir: Path, servers: Servers | None = None, *, with_api: bool = True,
              workers: int = 0, **overrides) -> Iterator[App]:
    """The API (unless with_api=False) and `workers` workers, with the config `overrides`.

    They run on the session's Redis and MinIO when `servers` is given, else on a private Redis
    and MinIO of their own; `data_dir` keeps their pid files and logs. All stop on exit.
    """
    if servers is None:
        cfg = make_config(data_dir, **overrides)
    else:
        cfg = replace(servers.cfg, **{**overrides,
                                      "api": {"port": free_port(), **overrides.get("api", {})},
                                      "stack": {**overrides.get("stack", {}), "data_dir": str(data_dir)}})
    app = App(cfg)
    try:
        if servers is None:
            app.up(app=False)
        app.start(*([app.api_service] if with_api else []),
                  *[lambda i=i: app.worker_service(i) for i in range(workers)])
        yield app
    finally:
        app.down()


@pytest.fixture
def start_app(servers, tmp_path_factory):
    """start_app(**kwargs): app_stack on the session's Redis and MinIO, stopped after the test."""
    with contextlib.ExitStack() as running:
        yield lambda **kwargs: running.enter_context(
            app_stack(tmp_path_factory.mktemp("app"), servers, **kwargs))


@pytest.fixture(scope="module")
def workers(servers, tmp_path_factory) -> Iterator[App]:
    """Two worker processes on the session's Redis and MinIO, for one test module."""
    with app_stack(tmp_path_factory.mktemp("workers"), servers, with_api=False, workers=2) as stack:
        yield stack


UPLOAD_LIMIT = 2 * 1024 * 1024  # the `api` fixture's: small, so the 413 cases stay cheap


@pytest.fixture(scope="module")
def api(servers, tmp_path_factory) -> Iterator[App]:
    """The API alone (no worker) on the session's Redis and MinIO, with a small upload limit."""
    with app_stack(tmp_path_factory.mktemp("api"), servers,
                   task={"max_upload_bytes": UPLOAD_LIMIT}) as app:
        yield app


@pytest.fixture
def clean_redis(servers: Servers) -> redis.Redis:
    r = servers.redis()
    r.flushdb()
    return r


@pytest.fixture
def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def mc(servers: Servers, tmp_path_factory):
    """Run the real `mc` against the test MinIO under the alias `local`."""
    binary = install.resolve_binary(install.MC, servers.cfg.stack.mc_bin)
    config_dir = tmp_path_factory.mktemp("mc")
    m = servers.cfg.minio

    def run(*args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(binary), "--config-dir", str(config_dir), "--no-color", *args],
                              capture_output=True, text=True, check=check, cwd=cwd, timeout=300)

    run("alias", "set", "local", f"http://{m.endpoint}", m.access_key, m.secret_key)
    return run


def load_model(name: str):
    """A catalogue model, loaded in-process: from the repository's models/, or for one kept
    outside git, from the install step's cache (infra/dev.sh runs it before the tests)."""
    from maskflow.infra.domain.segmenter import Segmenter
    file = load_config(env={}).model_files[name]
    if file.fetch is None:  # the repository's own, wherever the tests run from
        return Segmenter.load(REPO / "models" / file.path.name, file.input_size)
    return Segmenter.load(file.path, file.input_size, manifest_path=REPO / "models" / file.manifest.name)


@pytest.fixture(scope="session")
def person_model():
    """The default model, to compare the workers' masks against."""
    return load_model(DEFAULT)


@pytest.fixture(scope="session")
def general_model():
    """U^2-Netp, the `general` model."""
    return load_model(GENERAL)


@pytest.fixture(scope="session")
def u2net_model():
    return load_model("u2net")


@pytest.fixture(scope="session")
def portrait_model():
    return load_model("portrait")


@pytest.fixture
def tasks(servers):
    from maskflow.infra.stores.tasks import TaskStore
    return TaskStore(servers.redis(), servers.cfg)


@pytest.fixture
def objects(servers):
    from maskflow.infra.stores.objects import ObjectStore
    return ObjectStore(servers.cfg)


def wait_for_task(tasks, task_id: str, timeout: float = 60.0):
    """The task once it is completed or failed (its change feed wakes the wait); StackError after
    `timeout`."""
    def finished():
        task = tasks.wait_for_terminal(task_id, timeout=1.0)  # at once while the task does not exist
        return task if task is not None and task.terminal else None
    return wait_until(finished, f"task {task_id} to finish", timeout,
                      state=lambda: f"the task is {tasks.get(task_id)}")


__all__ = ["App", "Servers", "UPLOAD_LIMIT", "app_stack", "make_config", "FIXTURES", "StackError", "wait_for_task"]
