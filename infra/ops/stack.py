"""The local stack: Redis, MinIO, the API and the workers as background processes on loopback.

Each service is a detached process with a pidfile under ``<data_dir>/run`` and a log under
``<data_dir>/logs``.  `up` reuses services that are already running (so running it twice is
harmless), waits for each one by probing it, and on any failure stops what it started.
`down` stops everything it finds a pidfile for.  The API and workers are launched as
``python -m maskflow.api`` / ``python -m maskflow.functions`` so this module never imports them.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis
from minio.error import S3Error, ServerError
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from maskflow.infra.ops import install
from maskflow.infra.ops.bootstrap import bootstrap, notify_env
from maskflow.infra.ops.console import say
from maskflow.infra.ops.processes import READY_TIMEOUT, StackError, alive, free_port, port_is_free, wait_until
from maskflow.infra.stores.keys import Heartbeat
from maskflow.infra.stores.workers import worker_status
from maskflow.infra.domain.catalog import names
from maskflow.infra.wiring.config import Config, env_for, replace, split_address
from maskflow.infra.wiring.connections import minio_client, redis_client
from maskflow.infra.wiring.net import is_loopback

STOP_TIMEOUT = 15.0


def _require_loopback(key: str, host: str) -> None:
    if not is_loopback(host):
        raise StackError(f"config key {key}={host}: the local stack binds to loopback only; "
                         f"use 127.0.0.1")


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    ready: Callable[[], bool]
    port: tuple[str, int] | None = None

    @property
    def marker(self) -> str:
        """Text in /proc/<pid>/cmdline that tells our process from a reused pid."""
        if self.argv[0] == sys.executable:
            return " ".join(self.argv[1:3])  # "-m api"
        return Path(self.argv[0]).name  # redis-server rewrites its title but keeps its name


class Stack:
    def __init__(self, cfg: Config, log: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.data_dir = cfg.data_dir
        self.run_dir = self.data_dir / "run"
        self.log_dir = self.data_dir / "logs"
        self.say = log or say

    # -- process bookkeeping -------------------------------------------------------------
    def _pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def running(self, name: str) -> int | None:
        try:
            pid_text, marker = self._pidfile(name).read_text().split("\n", 1)
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        return pid if alive(pid, marker.strip()) else None

    def _spawn(self, service: Service) -> subprocess.Popen:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{service.name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(service.argv, env=service.env,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self._pidfile(service.name).write_text(f"{proc.pid}\n{service.marker}")
        return proc

    def _start(self, service: Service, started: list[str]) -> None:
        if self.running(service.name):
            self.say(f"{service.name} already running")
            wait_until(service.ready, service.name, timeout=10)
            return
        if service.port and not port_is_free(*service.port):
            host, port = service.port
            raise StackError(f"port {host}:{port} for {service.name} is already in use by another "
                             f"process: stop it, or choose another port in the config")
        self.say(f"starting {service.name} ...")
        proc = self._spawn(service)
        started.append(service.name)
        wait_until(service.ready, service.name, proc=proc,
                   log=self.log_dir / f"{service.name}.log")

    def stop(self, name: str) -> bool:
        pid = self.running(name)
        pidfile = self._pidfile(name)
        if pid is None:
            pidfile.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while alive(pid, "") and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            time.sleep(0.05)
        if alive(pid, ""):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        pidfile.unlink(missing_ok=True)
        return True

    # -- the services ----------------------------------------------------------------------
    def redis_client(self) -> redis.Redis:
        # Short timeouts: readiness probes poll it until the server answers.
        return redis_client(self.cfg, timeout=2, connect_timeout=2)

    def redis_service(self) -> Service:
        cfg = self.cfg.redis
        data = self.data_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        argv = [str(install.redis_server()), "--bind", cfg.host, "--port", str(cfg.port),
                "--dir", str(data), "--appendonly", "yes", "--appendfsync", "everysec",
                "--maxmemory-policy", "noeviction", "--save", "", "--daemonize", "no",
                "--protected-mode", "yes"]
        return Service("redis", argv, dict(os.environ), lambda: self.redis_client().ping(),
                       (cfg.host, cfg.port))

    @property
    def event_store(self) -> Path:
        """MinIO's queue_dir: events it has not yet delivered to Redis."""
        return self.data_dir / "minio-events"

    def minio_env(self) -> dict[str, str]:
        cfg = self.cfg
        return {
            **os.environ,
            "MINIO_ROOT_USER": cfg.minio.access_key,
            "MINIO_ROOT_PASSWORD": cfg.minio.secret_key,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
            # Acknowledge an upload only once its event is delivered or queued on disk.
            "MINIO_API_SYNC_EVENTS": "on",
            "MINIO_API_CORS_ALLOW_ORIGIN": "*",
            **notify_env(cfg, str(self.event_store)),
        }

    def minio_service(self) -> Service:
        host, port = split_address(self.cfg.minio.endpoint)
        binary = install.resolve_binary(install.MINIO, self.cfg.stack.minio_bin)
        self.event_store.mkdir(parents=True, exist_ok=True)
        argv = [str(binary), "server", str(self.data_dir / "minio"), "--quiet",
                "--address", f"{host}:{port}", "--console-address", f"{host}:{free_port()}"]
        url = f"http://{host}:{port}/minio/health/ready"
        return Service("minio", argv, self.minio_env(), lambda: _http_ok(url), (host, port))

    def api_service(self) -> Service:
        cfg = self.cfg
        return Service("api", [sys.executable, "-m", "maskflow.api"], {**os.environ, **env_for(cfg)},
                       lambda: _http_ok(f"{cfg.api_url}/healthz"), (cfg.api.host, cfg.api.port))

    def worker_service(self, index: int, pool: Config | None = None, name: str = "") -> Service:
        """Worker `index` of the default pool, or of `pool` (its config) named `name`."""
        name = name or f"worker-{index}"
        env = {**os.environ, **env_for(pool or self.cfg)}
        return Service(name, [sys.executable, "-m", "maskflow.functions", "--id", name], env,
                       lambda: worker_status(self.redis_client(), name).get(Heartbeat.READY) == "1")

    def pools(self) -> list[tuple[str, Config]]:
        """(name, config) of every worker `up` starts: the default pool, then the heavy one."""
        stack, heavy = self.cfg.stack, self.cfg.stack.heavy_models if self.cfg.stack.heavy_workers else ()
        light = self.cfg.worker.models or tuple(n for n in names() if n not in heavy)
        workers = [(f"worker-{i}", replace(self.cfg, worker={"models": light})) for i in range(stack.workers)]
        cores = os.cpu_count() or 1
        heavy_cfg = replace(self.cfg, worker={"models": heavy, "concurrency": cores},
                            model={"concurrent_runs": cores})
        return workers + [(f"worker-heavy-{i}", heavy_cfg) for i in range(len(heavy) and stack.heavy_workers)]

    # -- up / down ---------------------------------------------------------------------------
    def up(self, app: bool = True) -> None:
        """Start Redis and MinIO, bootstrap the bucket, then (with app) the API and workers.

        With `redis.sentinels` set, Redis is the operator's (a master, replicas, Sentinels): the
        stack starts none and finds the master through the Sentinels.
        """
        if not self.cfg.redis.sentinels:
            _require_loopback("redis.host", self.cfg.redis.host)
        _require_loopback("minio.endpoint", split_address(self.cfg.minio.endpoint)[0])
        install.resolve_binary(install.MINIO, self.cfg.stack.minio_bin)  # build before starting anything
        services = [self.minio_service, self.bootstrap]
        if not self.cfg.redis.sentinels:
            services.insert(0, self.redis_service)
        if app:
            _require_loopback("api.host", self.cfg.api.host)
            services.append(self.api_service)
            pools = self.pools()
            for _name, pool in pools:  # fetch what the pools need before starting anything
                for model, file in pool.model_files.items():
                    if model in pool.worker.models:
                        install.install_model(model, file)
            services.extend(lambda i=i, name=name, pool=pool: self.worker_service(i, pool, name)
                            for i, (name, pool) in enumerate(pools))
        self.start(*services)

    def start(self, *steps: Callable[[], Service | None]) -> None:
        """Run the steps in order, starting each Service one returns; all-or-nothing."""
        started: list[str] = []
        try:
            for step in steps:
                service = step()
                if service is not None:
                    self._start(service, started)
        except BaseException:
            for name in reversed(started):
                self.stop(name)
            raise

    def bootstrap(self) -> None:
        # For a moment after /minio/health/ready turns 200, MinIO answers bucket calls with 503
        # and does not know its notification targets yet (they connect in the background).
        starting_up = retry_if_exception(lambda e: isinstance(e, ServerError) or (
            isinstance(e, S3Error) and (e.code == "XMinioServerNotInitialized" or (
                e.code == "InvalidArgument" and "ARN" in (e.message or "")))))
        s3, r = minio_client(self.cfg), self.redis_client()
        try:
            for attempt in Retrying(retry=starting_up, stop=stop_after_delay(READY_TIMEOUT),
                                    wait=wait_exponential(multiplier=0.05, max=1), reraise=True):
                with attempt:
                    bootstrap(self.cfg, s3, r)
        except S3Error as exc:
            if exc.code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
                raise StackError(f"MinIO at {self.cfg.minio.endpoint} rejected the credentials "
                                 f"({exc.code}): set MASKFLOW_MINIO_ACCESS_KEY and "
                                 f"MASKFLOW_MINIO_SECRET_KEY to its root user") from None
            raise StackError(f"MinIO bootstrap failed: {exc.code}: {exc.message}") from None
        except ServerError as exc:
            raise StackError(f"MinIO bootstrap failed: {exc}") from None

    def services(self) -> list[str]:
        if not self.run_dir.exists():
            return []
        return sorted(p.stem for p in self.run_dir.glob("*.pid"))

    def down(self) -> list[str]:
        order = {"redis": 3, "minio": 2, "api": 1}
        stopped = []
        for name in sorted(self.services(), key=lambda n: order.get(n, 0)):
            if self.stop(name):
                stopped.append(name)
        return stopped


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200
