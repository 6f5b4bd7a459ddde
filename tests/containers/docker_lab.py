"""The Docker side of the container tests: an engine, base images from Debian's packages, and
compose projects of the test's own.

Docker Hub is out of reach here, so the public base images the Dockerfiles name by default are
replaced by images built with mmdebstrap from the host's apt sources, trusting the host's CA
certificates (pip and apt inside the builds need them). They and the image holding the
host-built MinIO and mc are kept between runs, keyed by what they were made from. Anything
that cannot be installed or started raises DockerLabError: the tests then error, never skip.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import requests

from maskflow.infra.ops import install
from maskflow.infra.ops.console import say
from maskflow.infra.ops.processes import StackError, free_port, wait_until
from maskflow.infra.ops.roles import Credentials
from maskflow.infra.wiring.config import load_config

# Commands the tests need, and the Debian package that brings each.
PACKAGES = {"dockerd": "docker.io", "docker-compose": "docker-compose", "mmdebstrap": "mmdebstrap"}
SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SUITE = "bookworm"
IMAGE_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What debian:bookworm-slim leaves out, so the stand-ins' sizes compare with the public bases.
SLIM = ["--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        '--aptopt=Dir::Cache::pkgcache "";', '--aptopt=Dir::Cache::srcpkgcache "";']
# Stand-ins for the Dockerfiles' public defaults: build argument -> (image name, packages).
BASES = {"DEBIAN_IMAGE": ("maskflow-base/debian", ["ca-certificates"]),
         "PYTHON_IMAGE": ("maskflow-base/python", ["ca-certificates", "python3", "python3-venv"])}
CA_DIR = Path("/usr/local/share/ca-certificates")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
# One test session at a time drives Docker on a machine: the one that started dockerd stops it,
# and may sweep what an interrupted run left, without pulling either from under another run.
LOCK = Path(tempfile.gettempdir()) / "maskflow-docker-tests.lock"
LOCK_WAIT = 600.0
PROJECT_PREFIX = "mfct"
BUILD_CACHE_KEPT = "3GB"  # BuildKit's cache beyond this is pruned, oldest first


class DockerLabError(RuntimeError):
    """Docker could not be installed, started or used; the message says why."""


def run(*argv: str | Path, env: dict[str, str] | None = None, timeout: float = 600,
        check: bool = True, log: Path | None = None) -> subprocess.CompletedProcess:
    """Run a command; output goes to `log` (appended) or is captured. DockerLabError on failure."""
    argv = [str(a) for a in argv]
    try:
        if log is None:
            proc = subprocess.run(argv, env=env, timeout=timeout, capture_output=True, text=True)
            output = proc.stdout + proc.stderr
        else:
            with log.open("a") as out:
                out.write(f"$ {' '.join(argv)}\n")
                out.flush()
                proc = subprocess.run(argv, env=env, timeout=timeout, stdout=out,
                                      stderr=subprocess.STDOUT, text=True)
            output = log.read_text(errors="replace")
    except subprocess.TimeoutExpired as exc:
        raise DockerLabError(f"`{' '.join(argv)}` took over {timeout:.0f} s") from exc
    if check and proc.returncode != 0:
        raise DockerLabError(f"`{' '.join(argv)}` exited with {proc.returncode}:\n{output[-3000:]}")
    return proc


def command(name: str) -> str | None:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:{SEARCH_PATH}")


def install_missing() -> None:
    missing = sorted({pkg for cmd, pkg in PACKAGES.items() if command(cmd) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise DockerLabError(f"{' '.join(missing)} missing, and installing them needs root")
    say(f"installing {' '.join(missing)} from Debian's packages ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run("apt-get", "update", "-qq", env=env)
    run("apt-get", "install", "-y", "-qq", *missing, env=env)


@dataclass
class Engine:
    """A Docker engine: the one already running, or a dockerd this object started and stops."""

    workdir: Path
    docker: str = ""
    env: dict[str, str] = field(default_factory=dict)
    daemon: subprocess.Popen | None = None
    lock: int | None = None
    # dockerd sets FORWARD's policy to DROP and turns forwarding on, and leaves both so when
    # it stops: put back what was there (the multi-host test's bridge needs FORWARD).
    host_network: tuple[str, str] | None = None

    @classmethod
    def start(cls, workdir: Path) -> Engine:
        lock = take_lock()
        engine = None
        try:
            engine = cls._start(workdir)
            engine.lock = lock
            engine.sweep()
        except BaseException:
            if engine is None:
                os.close(lock)
            else:
                engine.stop()
            raise
        return engine

    @classmethod
    def _start(cls, workdir: Path) -> Engine:
        install_missing()
        # The engine package's own client (docker.io's, with BuildKit built in) first on PATH:
        # docker-compose 1.29 builds with whichever `docker` it finds.
        docker = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else command("docker")
        if docker is None:
            raise DockerLabError("no docker client on PATH after installing docker.io")
        path = f"{Path(docker).parent}:{os.environ.get('PATH', '')}:{SEARCH_PATH}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
        env.update(PATH=path, DOCKER_BUILDKIT="1", COMPOSE_DOCKER_CLI_BUILD="1", BUILDKIT_PROGRESS="plain")
        engine = cls(workdir, docker, env)
        if not engine.answers():
            engine.launch()
        return engine

    def answers(self) -> bool:
        return run(self.docker, "version", "--format", "{{.Server.Version}}", env=self.env,
                   timeout=30, check=False).returncode == 0

    def launch(self) -> None:
        dockerd = command("dockerd")
        if os.geteuid() != 0:
            raise DockerLabError("no Docker engine answers, and starting dockerd needs root")
        log = self.workdir / "dockerd.log"
        self.host_network = (forward_policy(), IP_FORWARD.read_text().strip())
        say("starting dockerd ...")
        with log.open("w") as out:
            self.daemon = subprocess.Popen([dockerd], stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_until(self.answers, "dockerd to answer", 60, proc=self.daemon, log=log, every=0.5)
        except StackError as exc:
            self.stop()
            raise DockerLabError(f"dockerd cannot start here: {exc}\n"
                                 + log.read_text(errors="replace")[-3000:]) from exc

    def stop(self) -> None:
        """If this object started dockerd: trim the build cache and stop dockerd (and with it
        the containerd it started). Then let the next test session have Docker."""
        try:
            if self.daemon is not None and self.daemon.poll() is None:
                self("builder", "prune", "--force", "--keep-storage", BUILD_CACHE_KEPT, check=False)
                self.daemon.terminate()
                try:
                    self.daemon.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.daemon.kill()
                    self.daemon.wait()
            if self.host_network is not None:
                policy, forwarding = self.host_network
                run(command("iptables") or "iptables", "-P", "FORWARD", policy, check=False)
                IP_FORWARD.write_text(forwarding + "\n")
                self.host_network = None
        finally:
            if self.lock is not None:
                os.close(self.lock)
                self.lock = None

    def sweep(self) -> list[str]:
        """Remove the containers, networks and volumes of test projects an interrupted run left."""
        removed = []
        for kind, listing, remove in (("containers", ("ps", "-a"), ("rm", "--force", "--volumes")),
                                      ("networks", ("network", "ls"), ("network", "rm")),
                                      ("volumes", ("volume", "ls"), ("volume", "rm", "--force"))):
            names = self(*listing, "--format", "{{.Names}}" if kind == "containers" else "{{.Name}}",
                         timeout=60).stdout.split()
            left = [n for n in names if n.startswith(PROJECT_PREFIX)]
            if left:
                self(*remove, *left, timeout=120)
                removed += left
        if removed:
            say(f"removed what an earlier test run left: {' '.join(removed)}")
        return removed

    def __call__(self, *args: str | Path, timeout: float = 600, check: bool = True,
                 log: Path | None = None) -> subprocess.CompletedProcess:
        return run(self.docker, *args, env=self.env, timeout=timeout, check=check, log=log)

    def has_image(self, ref: str) -> bool:
        return self("image", "inspect", ref, check=False, timeout=30).returncode == 0

    def image_size(self, ref: str) -> int:
        return int(self("image", "inspect", "--format", "{{.Size}}", ref).stdout)

    # -- images ------------------------------------------------------------------------------
    def build_args(self) -> dict[str, str]:
        """The .env lines that point every Dockerfile at images made here."""
        with ThreadPoolExecutor(len(BASES)) as pool:
            bases = {arg: pool.submit(self.base_image, name, packages)
                     for arg, (name, packages) in BASES.items()}
            return {**{arg: job.result() for arg, job in bases.items()},
                    "MINIO_BINARIES": self.minio_binaries(), "MODELS": self.models()}

    def base_image(self, name: str, packages: list[str]) -> str:
        """A Debian base from the host's apt sources and CA certificates, built once per input."""
        sources = apt_sources()
        argv = ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(packages)}", *SLIM]
        if CA_DIR.is_dir():
            argv += [f"--customize-hook=copy-in {CA_DIR} {CA_DIR.parent}",
                     '--customize-hook=chroot "$1" update-ca-certificates >/dev/null 2>&1']
        inputs = [*argv, *(p.read_bytes().hex() for p in sources),
                  *(p.read_bytes().hex() for p in sorted(CA_DIR.rglob("*.crt")))]
        ref = f"{name}:{SUITE}-{digest(inputs)}"
        if self.has_image(ref):
            return ref
        say(f"building {ref} from Debian's packages ...")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=self.workdir) as tmp:
            tar = Path(tmp) / "rootfs.tar"
            run(*argv, SUITE, tar, *sources, timeout=600)
            self("import", "--change", f"ENV {IMAGE_PATH}", "--change", "ENV LANG=C.UTF-8",
                 "--change", 'CMD ["bash"]', tar, ref)
        say(f"built {ref} in {time.monotonic() - started:.0f} s")
        # The bases made from earlier sources or certificates are of no further use.
        older = self("image", "ls", name, "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
        for stale in set(older) - {ref}:
            self("image", "rm", stale, check=False)
        return ref

    def minio_binaries(self) -> str:
        """An image holding the host-built MinIO and mc as /out/minio and /out/mc."""
        binaries = [install.resolve_binary(pin, os.environ.get(f"MASKFLOW_STACK_{pin.name.upper()}_BIN", ""))
                    for pin in (install.MINIO, install.MC)]
        ref = "maskflow-base/minio-binaries:" + digest(
            [f"{b}:{b.stat().st_size}:{b.stat().st_mtime_ns}" for b in binaries])
        if self.has_image(ref):
            return ref
        with tempfile.TemporaryDirectory(dir=self.workdir) as tmp:
            for binary in binaries:
                shutil.copy2(binary, Path(tmp) / binary.name)
            (Path(tmp) / "Dockerfile").write_text("FROM scratch\nCOPY minio mc /out/\n")
            self("build", "--quiet", "--tag", ref, tmp)
        return ref

    def models(self) -> str:
        """An image holding the models kept outside git as /models/<file>, from the install
        step's cache (fetched there first where missing), so the build need not fetch them."""
        files = [install.install_model(name, file) for name, file in load_config().model_files.items()
                 if file.fetch]
        ref = "maskflow-base/models:" + digest([f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files])
        if self.has_image(ref):
            return ref
        with tempfile.TemporaryDirectory(dir=self.workdir) as tmp:
            for f in files:
                shutil.copy2(f, Path(tmp) / f.name)
            (Path(tmp) / "Dockerfile").write_text(
                f"FROM scratch\nCOPY {' '.join(f.name for f in files)} /models/\n")
            self("build", "--quiet", "--tag", ref, tmp)
        return ref


def forward_policy() -> str:
    """iptables' FORWARD policy (ACCEPT where nothing set it)."""
    iptables = command("iptables")
    listing = run(iptables, "-S", "FORWARD", check=False, timeout=30).stdout if iptables else ""
    return next((line.split()[2] for line in listing.splitlines() if line.startswith("-P FORWARD")), "ACCEPT")


def take_lock() -> int:
    """The machine-wide lock of the container tests, waited for while another session holds it."""
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o600)

    def taken() -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    if not taken():
        say("another test session is using Docker; waiting for it ...")
        try:
            wait_until(taken, f"the container tests' lock {LOCK}", LOCK_WAIT, every=2)
        except StackError as exc:
            os.close(fd)
            raise DockerLabError(str(exc)) from exc
    return fd


def digest(parts: list[str]) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def apt_sources() -> list[Path]:
    """The host's apt source files that name Debian's archive (mmdebstrap reads either format)."""
    candidates = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list")),
                  *sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]
    found = [p for p in candidates if p.is_file() and "debian" in p.read_text()]
    if not found:
        raise DockerLabError("no apt source for Debian's archive in /etc/apt: mmdebstrap needs one")
    return found


@dataclass
class Project:
    """One compose project: its own name, its own .env, its own free loopback ports."""

    engine: Engine
    name: str
    files: list[Path]
    workdir: Path
    settings: dict[str, str]
    down_done: bool = False

    @classmethod
    def create(cls, engine: Engine, repo: Path, workdir: Path, build_args: dict[str, str],
               *extra_files: str) -> Project:
        api_port, minio_port = free_port(), free_port()
        # Every service's credentials, as a user makes them before the first `up`
        secrets_dir = workdir / "secrets"
        run(sys.executable, "-m", "maskflow.infra.ops.credentials", secrets_dir,
            env={k: v for k, v in os.environ.items() if not k.startswith("MASKFLOW_")})
        settings = {
            "SECRETS_DIR": str(secrets_dir),
            "MINIO_ROOT_USER": f"admin{secrets.token_hex(4)}",
            "MINIO_ROOT_PASSWORD": secrets.token_hex(16),
            "API_HOST_PORT": str(api_port),
            "MINIO_HOST_PORT": str(minio_port),
            "MASKFLOW_MINIO_PUBLIC_ENDPOINT": f"127.0.0.1:{minio_port}",
            **build_args,
        }
        env_file = workdir / ".env"
        env_file.touch(mode=0o600)
        env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        files = [repo / "docker-compose.yml", *(repo / f for f in extra_files)]
        return cls(engine, f"{PROJECT_PREFIX}{secrets.token_hex(4)}", files, workdir, settings)

    @property
    def credentials(self) -> Credentials:
        return Credentials(Path(self.settings["SECRETS_DIR"]))

    @property
    def auth(self) -> dict[str, str]:
        """The header the API asks for: the first bearer token the credentials step made."""
        token = self.credentials.path("api", "tokens").read_text().split()[0]
        return {"Authorization": f"Bearer {token}"}

    @cached_property
    def http(self) -> requests.Session:
        session = requests.Session()
        session.headers.update(self.auth)
        return session

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.settings['API_HOST_PORT']}"

    @property
    def s3_endpoint(self) -> str:
        return f"127.0.0.1:{self.settings['MINIO_HOST_PORT']}"

    @property
    def log(self) -> Path:
        return self.workdir / "compose.log"

    def compose(self, *args: str, timeout: float = 600, log: bool = True,
                check: bool = True) -> subprocess.CompletedProcess:
        argv = ["docker-compose", "--project-name", self.name, "--env-file", str(self.workdir / ".env")]
        for f in self.files:
            argv += ["--file", str(f)]
        # The .env alone decides: a variable of the same name in this shell would win over it.
        env = {k: v for k, v in self.engine.env.items() if k not in self.settings}
        return run(*argv, *args, env=env, timeout=timeout, check=check, log=self.log if log else None)

    def up(self, workers: int) -> None:
        self.compose("build")
        self.compose("up", "--detach", "--scale", f"worker={workers}")

    def services(self) -> list[str]:
        return self.compose("config", "--services", log=False).stdout.split()

    def containers(self, service: str) -> list[str]:
        return sorted(self.compose("ps", "-q", service, log=False).stdout.split())

    def container(self, service: str) -> str:
        (cid,) = self.containers(service)
        return cid

    def redis_cli(self, *args: str) -> str:
        """redis-cli in the Redis container as the admin user; the password goes by environment."""
        user = self.credentials.path("admin", "redis-username").read_text().strip()
        env = {**self.engine.env, "REDISCLI_AUTH": self.credentials.redis_password("admin")}
        return run(self.engine.docker, "exec", "-e", "REDISCLI_AUTH", self.container("redis"),
                   "redis-cli", "--no-auth-warning", "--user", user, "--raw", *args,
                   env=env, timeout=30).stdout.strip()

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "40", log=False, check=False).stdout

    def down(self) -> None:
        """docker-compose down -v, and the images it built (BuildKit's cache keeps their layers)."""
        if not self.down_done:
            self.compose("down", "--volumes", "--rmi", "local", "--timeout", "20")
            self.down_done = True

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, networks and volumes of this project that still exist."""
        label = f"label=com.docker.compose.project={self.name}"
        found = {kind: self.engine(*cmd, "--filter", label, "--format", "{{.Names}}" if kind == "containers"
                                   else "{{.Name}}", timeout=30).stdout.split()
                 for kind, cmd in (("containers", ("ps", "-a")), ("networks", ("network", "ls")),
                                   ("volumes", ("volume", "ls")))}
        # Also by name, in case a label was not set.
        for kind, cmd in (("networks", ("network", "ls")), ("volumes", ("volume", "ls"))):
            names = self.engine(*cmd, "--format", "{{.Name}}", timeout=30).stdout.split()
            found[kind] = sorted(set(found[kind]) | {n for n in names if n.startswith(f"{self.name}_")})
        return {kind: names for kind, names in found.items() if names}


def mc_env(project: Project, alias: str) -> dict[str, str]:
    """mc's alias through its environment, so the credentials never go on a command line."""
    s = project.settings
    return {**os.environ, f"MC_HOST_{alias}":
            f"http://{s['MINIO_ROOT_USER']}:{s['MINIO_ROOT_PASSWORD']}@{project.s3_endpoint}"}


def mc_json(lines: str) -> list[dict]:
    return [json.loads(line) for line in lines.splitlines() if line.strip().startswith("{")]
