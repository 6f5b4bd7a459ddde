"""The layout a newcomer relies on (docs/architecture.md): imports point one way, and no module
grows past what one reading takes in."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

PACKAGES = ("api", "functions", "infra")
MAX_LINES = 350
# What each part may import from maskflow; infra's layers, lowest first.
ALLOWED = {
    "api": {"api", "infra"},
    "functions": {"functions", "infra"},
    "infra.domain": {"infra.domain"},
    "infra.wiring": {"infra.domain", "infra.wiring"},
    "infra.stores": {"infra.domain", "infra.wiring", "infra.stores"},
    "infra.sdk": {"infra.domain", "infra.wiring", "infra.stores", "infra.ops", "infra.sdk"},  # `maskflow up`
    "infra.ops": {"infra.domain", "infra.wiring", "infra.stores", "infra.ops"},
}


def modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def part_of(dotted: str) -> str:
    """'infra.stores.tasks' -> 'infra.stores'; 'api.app' -> 'api'."""
    head = dotted.split(".")
    return ".".join(head[:2]) if head[0] == "infra" and len(head) > 2 else head[0]


def maskflow_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
            [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        found |= {name.removeprefix("maskflow.") for name in names if name.startswith("maskflow.")}
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_point_one_way(path):
    here = part_of(".".join(path.relative_to(REPO).with_suffix("").parts))
    wrong = {name for name in maskflow_imports(path)
             if not any(name == part or name.startswith(f"{part}.") for part in ALLOWED[here])}
    assert not wrong, f"{here} must not import {sorted(wrong)}"


def test_no_module_is_longer_than_one_reading():
    long = {str(p.relative_to(REPO)): n for p in modules()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
