"""What results are called below --out: <stem><suffix>, one stem per input."""
from __future__ import annotations

from pathlib import Path, PurePosixPath


def unique_stems(paths: list[Path]) -> list[str]:
    """photo.jpg -> photo; when two inputs share a stem, keep their whole names (photo.jpg)."""
    stems = [p.stem for p in paths]
    names = [p.name if stems.count(p.stem) > 1 else p.stem for p in paths]
    seen: dict[str, int] = {}
    out = []
    for name in names:  # the same file name twice on the command line (a/x.jpg b/x.jpg)
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def result_stems(rels: list[str]) -> dict[str, str]:
    """Per folder, <stem> unless two images share it (a.jpg, a.png), then the whole name."""
    by_dir: dict[str, list[str]] = {}
    for rel in rels:
        by_dir.setdefault(str(PurePosixPath(rel).parent), []).append(rel)
    out = {}
    for rels_in_dir in by_dir.values():
        names = [Path(PurePosixPath(rel).name) for rel in rels_in_dir]
        for rel, stem in zip(rels_in_dir, unique_stems(names)):
            parent = PurePosixPath(rel).parent
            out[rel] = str(parent / stem) if str(parent) != "." else stem
    return out
