"""The local stack: Redis, MinIO, the API and the workers as background processes on loopback.

Each service is a detached process with a pidfile under ``<data_dir>/run`` and a log under
``<data_dir>/logs``.  `up` reuses services that are already running (so running it twice is
harmless), waits for each one by probing it, and on any failure stops what it started.
`down` stops everything it finds a pidfile for.  The API and workers are launched as
``python -m maskflow.api`` / ``python -m maskflow.functions`` so this module never imports them.

Least privilege (infra/ops/roles.py): Redis starts with an aclfile (the default user off, a
user per role), MinIO reads its root credentials and its targets' Redis password from a file,
the bootstrap creates a MinIO user per role, and the API and workers get only their own
credentials, as files in ``stack.secrets_dir``.  With ``stack.certs_dir`` Redis and MinIO
serve TLS only, and MinIO reaches Redis through stunnel (its Redis target has no TLS).
"""
from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from maskflow.infra.ops import install, roles
from maskflow.infra.ops.bootstrap import BootstrapError, bootstrap_when_ready, notify_env
from maskflow.infra.ops.console import say
from maskflow.infra.ops.processes import StackError, alive, free_port, port_is_free, wait_until
from maskflow.infra.stores.keys import WEBHOOKS_STREAM, Heartbeat
from maskflow.infra.stores.workers import worker_status
from maskflow.infra.domain.catalog import names
from maskflow.infra.wiring.config import Config, replace, split_address
from maskflow.infra.wiring.connections import minio_admin, minio_client, redis_client, tls_problem
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
    # a readiness error that waiting will not cure -> its one-line message (see wait_until)
    fatal: Callable[[Exception], str | None] | None = None

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
        self.credentials = roles.Credentials(cfg.secrets_dir)
        self.tls = bool(cfg.stack.certs_dir)

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
            wait_until(service.ready, service.name, timeout=10, fatal=service.fatal)
            return
        if service.port and not port_is_free(*service.port):
            host, port = service.port
            raise StackError(f"port {host}:{port} for {service.name} is already in use by another "
                             f"process: stop it, or choose another port in the config")
        self.say(f"starting {service.name} ...")
        proc = self._spawn(service)
        started.append(service.name)
        wait_until(service.ready, service.name, proc=proc,
                   log=self.log_dir / f"{service.name}.log", fatal=service.fatal)

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
    @property
    def admin_cfg(self) -> Config:
        """The config with Redis' admin user: the stack's own probes and the bootstrap.  With
        Sentinels, Redis is the operator's, and so are the config's credentials for it."""
        if self.cfg.redis.sentinels:
            return self.cfg
        return replace(self.cfg, redis={"username": "admin",
                                        "password": self.credentials.redis_password("admin")})

    def redis_client(self) -> redis.Redis:
        # Short timeouts: readiness probes poll it until the server answers.
        return redis_client(self.admin_cfg, timeout=2, connect_timeout=2)

    def service_config(self, role: str) -> Config:
        """The config a `role` process (api, worker) runs with: its own credentials only."""
        return roles.service_config(self.cfg, role, self.credentials)

    def acl_file(self) -> Path:
        """Redis' users (roles.py), written anew each time: hashes of the passwords only."""
        self.credentials.generate(self.cfg)
        return self.credentials.path("redis", "users.acl")

    def redis_service(self) -> Service:
        cfg = self.cfg.redis
        data = self.data_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        argv = [str(install.redis_server()), "--bind", cfg.host, "--port", str(cfg.port),
                "--dir", str(data), "--appendonly", "yes", "--appendfsync", "everysec",
                "--maxmemory-policy", "noeviction", "--save", "", "--daemonize", "no",
                "--protected-mode", "yes", "--aclfile", str(self.acl_file())]
        if self.tls:
            certs = Path(self.cfg.stack.certs_dir)
            argv[argv.index("--port") + 1] = "0"  # TLS only
            argv += ["--tls-port", str(cfg.port), "--tls-cert-file", str(certs / "public.crt"),
                     "--tls-key-file", str(certs / "private.key"), "--tls-auth-clients", "no"]
        return Service("redis", argv, roles.inherited_env(), lambda: self.redis_client().ping(),
                       (cfg.host, cfg.port), self._redis_tls_problem)

    def _redis_tls_problem(self, exc: Exception) -> str | None:
        redis = self.cfg.redis
        return tls_problem(exc, f"Redis at {redis.host}:{redis.port}", "redis.ca_file", redis.ca_file)

    def redis_tunnel_service(self) -> Service | None:
        """With TLS: stunnel on loopback, for MinIO's Redis targets, to Redis' TLS port."""
        if not self.tls:
            return None
        from maskflow.infra.ops.tunnel import tunnel_service
        return tunnel_service(self)

    @property
    def event_store(self) -> Path:
        """MinIO's queue_dir: events it has not yet delivered to Redis."""
        return self.data_dir / "minio-events"

    def minio_env(self) -> dict[str, str]:
        """MinIO's environment; its secrets are in a file only it reads (MINIO_CONFIG_ENV_FILE)."""
        cfg = self.cfg
        redis_address = None
        if self.tls:
            from maskflow.infra.ops.tunnel import tunnel_address
            redis_address = tunnel_address(self)
        self.credentials.generate(cfg)
        return {
            **roles.inherited_env(),
            # MinIO reads these files itself: its root user, and its targets' Redis login.
            "MINIO_ROOT_USER_FILE": str(self.credentials.write("root", "minio-root-user", cfg.minio.access_key)),
            "MINIO_ROOT_PASSWORD_FILE": str(self.credentials.write("root", "minio-root-password",
                                                                   cfg.minio.secret_key)),
            "MINIO_CONFIG_ENV_FILE": str(self.credentials.path("minio", "notify.env")),
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
            # Acknowledge an upload only once its event is delivered or queued on disk.
            "MINIO_API_SYNC_EVENTS": "on",
            "MINIO_API_CORS_ALLOW_ORIGIN": "*",
            **notify_env(cfg, str(self.event_store), redis_address=redis_address),
        }

    def minio_service(self) -> Service:
        host, port = split_address(self.cfg.minio.endpoint)
        binary = install.resolve_binary(install.MINIO, self.cfg.stack.minio_bin)
        self.event_store.mkdir(parents=True, exist_ok=True)
        argv = [str(binary), "server", str(self.data_dir / "minio"), "--quiet",
                "--address", f"{host}:{port}", "--console-address", f"{host}:{free_port()}"]
        if self.tls:
            argv += ["--certs-dir", str(Path(self.cfg.stack.certs_dir))]
        scheme = "https" if self.cfg.minio.secure else "http"
        url = f"{scheme}://{host}:{port}/minio/health/ready"
        return Service("minio", argv, self.minio_env(), lambda: _http_ok(url, self.cfg.minio.ca_file),
                       (host, port), lambda exc: tls_problem(exc, f"MinIO at {host}:{port}", "minio.ca_file",
                                                             self.cfg.minio.ca_file))

    def api_service(self) -> Service:
        cfg = self.cfg
        return Service("api", [sys.executable, "-m", "maskflow.api"],
                       roles.service_env(cfg, "api", self.credentials),
                       lambda: _http_ok(f"{cfg.api_url}/healthz"), (cfg.api.host, cfg.api.port))

    def worker_service(self, index: int, pool: Config | None = None, name: str = "") -> Service:
        """Worker `index` of the default pool, or of `pool` (its config) named `name`."""
        name = name or f"worker-{index}"
        env = roles.service_env(pool or self.cfg, "worker", self.credentials)
        return Service(name, [sys.executable, "-m", "maskflow.functions", "--id", name], env,
                       lambda: worker_status(self.redis_client(), name).get(Heartbeat.READY) == "1",
                       fatal=self._redis_tls_problem)

    def webhooks_service(self) -> Service:
        """The webhook dispatcher, as the webhooks role; ready once its group exists (it makes it
        on start; Redis lists a consumer only once it has read an entry)."""
        def reading() -> bool:
            groups = self.redis_client().xinfo_groups(WEBHOOKS_STREAM)
            return any(g["name"] in ("webhooks", b"webhooks") for g in groups)
        return Service("webhooks", [sys.executable, "-m", "maskflow.functions.webhooks", "--id", "webhooks"],
                       roles.service_env(self.cfg, "webhooks", self.credentials), reading,
                       fatal=self._redis_tls_problem)

    def pools(self) -> list[tuple[str, Config]]:
        """(name, config) of every worker `up` starts: the default pool, then the heavy one."""
        stack, heavy = self.cfg.stack, self.cfg.stack.heavy_models if self.cfg.stack.heavy_workers else ()
        light = self.cfg.worker.models or tuple(n for n in names() if n not in heavy)
        workers = [(f"worker-{i}", replace(self.cfg, worker={"models": light})) for i in range(stack.workers)]
        cores = os.cpu_count() or 1
        # The default pool takes every event and moves the heavy models' to their lists.
        heavy_cfg = replace(self.cfg, worker={"models": heavy, "concurrency": cores,
                                              "shared_queue": not stack.workers},
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
        services = [self.redis_tunnel_service, self.minio_service, self.bootstrap]
        if not self.cfg.redis.sentinels:
            services.insert(0, self.redis_service)
        if app:
            _require_loopback("api.host", self.cfg.api.host)
            services += [self.api_service, self.webhooks_service]
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
        users = {role: (roles.minio_user(role), self.credentials.minio_secret(role)) for role in roles.MINIO_ROLES}
        try:
            bootstrap_when_ready(self.cfg, minio_client(self.cfg), self.redis_client(), minio_admin(self.cfg),
                                 users, reload_acl=not self.cfg.redis.sentinels)
        except BootstrapError as exc:
            raise StackError(str(exc)) from None

    def services(self) -> list[str]:
        if not self.run_dir.exists():
            return []
        return sorted(p.stem for p in self.run_dir.glob("*.pid"))

    def down(self) -> list[str]:
        order = {"redis": 4, "redis-tunnel": 3, "minio": 2, "api": 1}
        stopped = []
        for name in sorted(self.services(), key=lambda n: order.get(n, 0)):
            if self.stop(name):
                stopped.append(name)
        return stopped


def _http_ok(url: str, ca_file: str = "") -> bool:
    context = ssl.create_default_context(cafile=ca_file or None) if url.startswith("https:") else None
    with urllib.request.urlopen(url, timeout=2, context=context) as response:
        return response.status == 200
