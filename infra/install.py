"""Install the real servers: MinIO and mc built from source with `go install`, Redis from Debian.

The pins below are the only place versions are named.  MinIO no longer publishes community
binaries, so the project builds the pinned commits with the machine's own Go settings
(`GOTOOLCHAIN=local`, the configured GOPROXY) and caches the binaries per version under
``~/.cache/maskflow/bin``; a binary that is already built is reused.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GoPin:
    name: str
    module: str
    version: str  # the Go pseudo-version of the release commit
    release: str

    @property
    def spec(self) -> str:
        return f"{self.module}@{self.version}"


# MinIO RELEASE.2025-10-15T17-29-55Z = commit 9e49d5e7a648.
MINIO = GoPin("minio", "github.com/minio/minio", "v0.0.0-20251015172955-9e49d5e7a648",
              "RELEASE.2025-10-15T17-29-55Z")
# mc RELEASE.2025-08-13T08-35-41Z = commit 7394ce0dd2a8.
MC = GoPin("mc", "github.com/minio/mc", "v0.0.0-20250813083541-7394ce0dd2a8",
           "RELEASE.2025-08-13T08-35-41Z")
REDIS_DEBIAN_PACKAGE = "redis-server"


class InstallError(RuntimeError):
    """A server could not be installed; the message says what failed and what to do."""


def _log(message: str) -> None:
    print(f"maskflow: {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "maskflow" / "bin"


def pinned_binary(pin: GoPin) -> Path:
    return cache_dir() / f"{pin.name}-{pin.version}" / pin.name


def go_install(pin: GoPin) -> Path:
    """Return the pinned binary, building it with `go install` only when it is missing."""
    target = pinned_binary(pin)
    if target.is_file() and os.access(target, os.X_OK):
        return target
    go = shutil.which("go")
    if go is None:
        raise InstallError(f"cannot build {pin.name}: no Go toolchain on PATH. Install Go "
                           f"(https://go.dev/doc/install), then run this command again.")
    _log(f"building {pin.name} {pin.release} from source ({pin.spec}); "
         f"the first build takes several minutes ...")
    env = dict(os.environ, GOTOOLCHAIN="local", GOBIN=str(target.parent))
    target.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([go, "install", pin.spec], env=env, cwd=target.parent,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0 or not target.is_file():
        errors = [line for line in proc.stdout.splitlines() if not line.startswith("go: downloading")]
        detail = "\n".join(errors[-6:]) or f"exit code {proc.returncode}"
        raise InstallError(f"`GOTOOLCHAIN=local go install {pin.spec}` failed (to use a {pin.name} "
                           f"built elsewhere, set MASKFLOW_STACK_{pin.name.upper()}_BIN):\n{detail}")
    _log(f"built {target}")
    return target


def resolve_binary(pin: GoPin, configured: str = "") -> Path:
    """An operator-supplied binary (config `stack.<name>_bin`) wins; else the pinned build."""
    if configured:
        path = Path(configured)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise InstallError(f"config key stack.{pin.name}_bin: {configured} is not an executable file")
        return path
    return go_install(pin)


def redis_server() -> Path:
    """Return redis-server, installing Debian's package when it is missing."""
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if found:
        return Path(found)
    apt = shutil.which("apt-get")
    if apt is None:
        raise InstallError("redis-server is not installed and apt-get is missing: install Redis >= 6 yourself.")
    _log("installing redis-server from Debian's packages ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for args in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", REDIS_DEBIAN_PACKAGE]):
        proc = subprocess.run(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise InstallError(f"`{' '.join(args)}` failed (run as root?):\n{proc.stdout[-800:]}")
    if not Path("/usr/bin/redis-server").exists():
        raise InstallError("redis-server still missing after apt-get install")
    return Path("/usr/bin/redis-server")
