"""What `pip install` puts on a machine: one top-level name, and parts that import without the
model runtime (the `worker` extra) or the test tools (`requests` is only in the `dev` extra)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import re
import tomllib
import zipfile

from conftest import REPO


def test_the_wheel_installs_everything_under_maskflow(tmp_path):
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("api", "functions", "infra"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(tmp_path), str(source)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("maskflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"maskflow"}
    for module in ("maskflow/api/__main__.py", "maskflow/functions/__main__.py",
                   "maskflow/infra/sdk/client.py", "maskflow/infra/sdk/cli/__init__.py", "maskflow/api/static/index.html"):
        assert module in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "maskflow = maskflow.infra.sdk.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


BLOCK_MODEL_RUNTIME = """
import importlib.abc, importlib.util, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("onnxruntime", "cv2", "numpy", "PIL", "requests"):
            raise ImportError(f"{name} is not installed here")
sys.meta_path.insert(0, Absent())
import maskflow.api.app, maskflow.api.server, maskflow.infra.sdk.client, maskflow.infra.sdk.cli, maskflow.infra.ops.bootstrap
assert all(importlib.util.find_spec(name) is None for name in ("api", "functions", "infra")), "generic names leak"
print("ok")
"""


def test_api_client_and_cli_import_without_the_model_runtime(tmp_path):
    # From another directory, so nothing resolves against the checkout.
    proc = subprocess.run([sys.executable, "-c", BLOCK_MODEL_RUNTIME], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_worker_module_runs_by_its_installed_name(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "maskflow.functions", "--help"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "--config" in proc.stdout


def _lock(name: str) -> dict[str, str]:
    """A hashed lock's pins, name -> version; every pin must carry its hashes."""
    text = (REPO / "requirements" / name).read_text()
    pins = {}
    for block in re.split(r"\n(?=[a-z0-9])", text.strip()):
        first = block.splitlines()[0]
        name_, _, version = first.split(" ")[0].partition("==")
        assert version and "--hash=sha256:" in block, f"{name}: {first} is not pinned with hashes"
        pins[canonical(name_)] = version
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower().split("[")[0]


def test_the_locks_pin_every_dependency_with_hashes_and_agree():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {"app.lock": project["dependencies"],
              "worker.lock": project["dependencies"] + project["optional-dependencies"]["worker"],
              "dev.lock": project["dependencies"] + project["optional-dependencies"]["worker"]
              + [d for d in project["optional-dependencies"]["dev"] if not d.startswith("maskflow")]}
    dev = _lock("dev.lock")
    for lock, requirements in wanted.items():
        pins = _lock(lock)
        for requirement in requirements:
            name = canonical(re.split(r"[<>=!~ ;\[]", requirement)[0])
            assert name in pins, f"{lock} lacks {requirement}"
        assert all(dev[name] == version for name, version in pins.items()), f"{lock} disagrees with dev.lock"
    assert "setuptools" in dev  # dev.sh installs maskflow itself with --no-build-isolation
    assert "--require-hashes -r requirements/dev.lock" in (REPO / "infra" / "dev.sh").read_text()
    dockerfile = (REPO / "infra/ops/docker/app.Dockerfile").read_text()
    assert "--require-hashes -r /requirements/app.lock" in dockerfile
    assert "--require-hashes -r /requirements/worker.lock" in dockerfile
