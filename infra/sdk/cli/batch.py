"""`maskflow batch`: upload a folder, show progress, mirror the results into --out.

A re-run skips files whose results are already in --out, made by the model it asks for.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

from maskflow.infra.domain.formats import SUPPORTED_FORMATS
from maskflow.infra.ops.console import say
from maskflow.infra.sdk.cli.connect import api_client
from maskflow.infra.sdk.cli.exits import EXIT_FAILED, EXIT_OK, UsageError
from maskflow.infra.sdk.cli.names import result_stems
from maskflow.infra.sdk.cli.progress import Progress
from maskflow.infra.sdk.cli.recipe import Recipe, from_args
from maskflow.infra.sdk.cli.upload import STATE_FILE, Item, upload_through_api, upload_to_minio
from maskflow.infra.sdk.client import Client, atomic_write, result_paths
from maskflow.infra.wiring.config import Config

# Short spellings accepted besides .<format> (photo.jpg, scan.tif).
_SHORT_SUFFIXES = {"jpeg": ".jpg", "tiff": ".tif"}
# In --out: the model and options each result there was asked of, for results that named any.
MODELS_FILE = ".maskflow-models.json"


def batch(args, cfg: Config) -> int:
    root = Path(args.dir)
    if not root.is_dir():
        raise UsageError(f"{root}: not a directory")
    name = _batch_name(args.prefix, root)
    out = Path(args.out) if args.out else None
    suffixes = image_suffixes()
    rels, skipped = scan(root, suffixes)
    if not rels:
        raise UsageError(f"{root}: no image files ({', '.join(sorted(suffixes))})")
    stems = result_stems(rels)
    items = [Item(rel, root / rel, stems[rel]) for rel in rels]
    asked = from_args(args)
    made_by = ResultRecipes(out)
    todo = [i for i in items if not (_done_locally(out, i.stem, asked)
                                     and made_by.get(i.stem) == asked.signature)]
    client = api_client(args, cfg)
    _check_api(client)
    say(f"batch input/{name}/: {len(items)} images"
        + (f", model {asked.model}" if asked.model else "")
        + (f", options {asked.signature.partition('|')[2]}" if asked.options else "")
        + (f" ({skipped} other files ignored)" if skipped else "")
        + (f", {len(items) - len(todo)} already done in {out}, skipping them" if out else ""))
    if todo:
        if args.via == "s3":
            upload_to_minio(todo, cfg, name, asked)
        else:
            upload_through_api(todo, client, (out or root) / STATE_FILE, asked)
        _poll_until_done(todo, client, out, cfg, args.via,
                         on_download=lambda item: made_by.record(item.stem, asked.signature))
    failures = [i for i in todo if i.error is not None]
    say(f"batch input/{name}/: {len(items) - len(failures)} completed, {len(failures)} failed"
        + (f"; results in {out}" if out else ""))
    for item in failures:
        say(f"FAILED {item.rel}: {item.error}")
    return EXIT_FAILED if failures else EXIT_OK


def _batch_name(prefix: str | None, root: Path) -> str:
    """--prefix (default: DIR's name) without slashes or a leading input/."""
    name = (prefix or root.resolve().name).strip("/").removeprefix("input/")
    if not name:
        raise UsageError("batch: --prefix must name a folder, e.g. --prefix holiday")
    return name


def _check_api(client: Client) -> None:
    """Fail fast (exit 2) on a wrong URL or token, before uploading anything."""
    client.batch("input/")  # any authenticated read; 404 (no such batch) is fine


# -- which files, named how -----------------------------------------------------------------------
def image_suffixes() -> frozenset[str]:
    """File suffixes of the formats the workers decode."""
    short = [_SHORT_SUFFIXES[fmt] for fmt in SUPPORTED_FORMATS if fmt in _SHORT_SUFFIXES]
    return frozenset([f".{fmt}" for fmt in SUPPORTED_FORMATS] + short)


def scan(root: Path, suffixes: frozenset[str]) -> tuple[list[str], int]:
    """Image files under root (posix relative paths, sorted) and the number of others skipped."""
    images, skipped = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            rel = Path(dirpath, name).relative_to(root).as_posix()
            if Path(name).suffix.lower() in suffixes:
                images.append(rel)
            else:
                skipped += 1
    return sorted(images), skipped


def _done_locally(out: Path | None, stem: str, asked: Recipe) -> bool:
    if out is None:
        return False
    return all(p.is_file() for p in result_paths(out, stem, asked.parsed).values())


class ResultRecipes:
    """The recipe each result in --out was asked of (its signature: '' for none, else the model
    and the options), kept in MODELS_FILE there, so that a re-run asking for another model or
    other options does not take those results for done.

    Results that named nothing are not listed (a batch that never does writes no file).
    An entry is written after its results, so an interrupt in between means doing it again.
    """

    def __init__(self, out: Path | None):
        self.path = out / MODELS_FILE if out is not None else None
        self.models: dict[str, str] = {}
        if self.path is not None:
            try:
                loaded = json.loads(self.path.read_text())
            except (OSError, ValueError):
                loaded = {}
            if isinstance(loaded, dict):
                self.models = {k: v for k, v in loaded.items() if isinstance(v, str)}

    def get(self, stem: str) -> str:
        return self.models.get(stem, "")

    def record(self, stem: str, model: str) -> None:
        if self.path is None or self.get(stem) == model:
            return
        if model:
            self.models[stem] = model
        else:
            self.models.pop(stem, None)
        atomic_write(self.path, [json.dumps(self.models, indent=1, sort_keys=True).encode()])


# -- waiting --------------------------------------------------------------------------------------
def _poll_until_done(items: list[Item], client: Client, out: Path | None, cfg: Config,
                      via: str, on_download: Callable[[Item], None] | None = None) -> None:
    """Poll every unfinished item each round, downloading results as they complete."""
    pending = [i for i in items if i.error is None]
    failed = done = len(items) - len(pending)  # files the API rejected at upload
    bar = Progress("processing", len(items))
    bar.base = done  # settled, not processed: not part of the rate
    bar.update(done, failed, force=True)
    # Give up once nothing has finished for the whole polling budget (150 x 2 s by default).
    stall = cfg.task.max_polls * cfg.task.poll_interval
    last_change = time.monotonic()
    try:
        while pending:
            started = time.monotonic()
            still = []
            for item in pending:
                task = client.get(item.task_id) if via == "api" else client.find(item.key)
                status = _finished_status(item, task)
                if status is None:
                    still.append(item)
                    continue
                if status == "completed" and out is not None:
                    client.download(task, out, item.stem)
                    if on_download:
                        on_download(item)
                if status == "failed":
                    item.error = task.get("error") or "failed"
                    failed += 1
                done += 1
                last_change = time.monotonic()
                bar.update(done, failed)
            pending = still
            if pending and time.monotonic() - last_change > stall:
                for item in pending:
                    item.error = f"not finished after {stall} s without progress"
                break
            left = cfg.task.poll_interval - (time.monotonic() - started)
            if pending and left > 0:
                time.sleep(left)  # the polling interval itself
    finally:
        bar.close()


def _finished_status(item: Item, task: dict | None) -> str | None:
    """"completed" or "failed" once this upload's task is done, else None."""
    status = task.get("status") if task else None
    if status not in ("completed", "failed"):
        return None
    if item.fresh_after and (task.get("completed_at") or "") < item.fresh_after:
        return None  # the previous upload's result; ours is still coming
    return status
