"""Getting a batch's files into the bucket: straight to MinIO, or through the API.

Through the API, task ids go to a state file beside the results, so a re-run resumes instead
of submitting every file again.  minio is imported only when uploading: it is slow to import.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from maskflow.infra.domain import options
from maskflow.infra.domain.catalog import METADATA_KEY
from maskflow.infra.domain.clock import utc_iso
from maskflow.infra.sdk.cli.exits import UsageError
from maskflow.infra.sdk.cli.progress import Progress
from maskflow.infra.sdk.cli.recipe import Recipe
from maskflow.infra.sdk.client import Client, ClientError, atomic_write, sniff_content_type
from maskflow.infra.wiring.config import Config

if TYPE_CHECKING:
    from maskflow.infra.stores.objects import ObjectStore

STATE_FILE = ".maskflow-batch.json"


@dataclass
class Item:
    """One image of the batch and what became of it."""
    rel: str  # posix path below DIR
    path: Path
    stem: str  # result name below --out, without .png / .mask.png
    key: str = ""
    task_id: str | None = None
    fresh_after: str | None = None  # overwrote an older object: ignore results older than this
    error: str | None = None


# -- straight to MinIO ----------------------------------------------------------------------------
def upload_to_minio(items: list[Item], cfg: Config, batch_name: str, asked: Recipe = Recipe()) -> None:
    """Put each file at input/<batch_name>/<rel> like `mc mirror`: identical objects are skipped.

    With `model`, each object carries the user metadata model=NAME (x-amz-meta-model), which
    the worker reads from the event."""
    from minio.error import S3Error

    from maskflow.infra.stores.objects import ObjectStore
    store = ObjectStore(cfg)
    bar = Progress("upload", len(items))
    try:
        for n, item in enumerate(items, 1):
            item.key = f"input/{batch_name}/{item.rel}"
            try:
                _mirror(store, item, asked)
            except S3Error as exc:
                raise UsageError(f"MinIO at {cfg.minio.endpoint} refused {item.key}: {exc.code}") from None
            except OSError as exc:  # urllib3 connection errors are OSErrors too
                raise UsageError(f"cannot reach MinIO at {cfg.minio.endpoint} "
                                 f"({type(exc).__name__}): is it running?") from None
            bar.update(n)
    finally:
        bar.close()


def _mirror(store: ObjectStore, item: Item, asked: Recipe) -> None:
    """Upload the file unless the bucket holds the same bytes under its key already, asking
    for the same model and options: another recipe means a new task."""
    existing = _stat(store, item.key)
    if (existing is not None and (existing.etag or "").strip('"') == _md5(item.path)
            and _stored_metadata(existing) == asked.metadata):
        return
    if existing is not None:
        item.fresh_after = utc_iso()
    store.client.fput_object(store.bucket, item.key, str(item.path),
                             content_type=_content_type(item.path), metadata=asked.metadata or None)


def _stored_metadata(stat) -> dict[str, str]:
    """The model and options an object asks for in its user metadata."""
    meta = {k.lower().removeprefix("x-amz-meta-"): v for k, v in (stat.metadata or {}).items()
            if k.lower().startswith("x-amz-meta-")}
    asking = {METADATA_KEY, *map(options.metadata_key, options.NAMES)}
    return {k: v for k, v in meta.items() if k in asking}


def _stat(store: ObjectStore, key: str):
    """The object's metadata, or None if there is no such object."""
    from minio.error import S3Error

    from maskflow.infra.stores.objects import is_missing
    try:
        return store.client.stat_object(store.bucket, key)
    except S3Error as exc:
        if not is_missing(exc):
            raise
        return None


def _md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _content_type(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(64)
    return sniff_content_type(head, path.name) or "application/octet-stream"


# -- through the API ------------------------------------------------------------------------------
class StateFile:
    """Task ids of the files already submitted to one API, keyed by path below DIR."""

    def __init__(self, path: Path, api_url: str):
        self.path = path
        try:
            self.state = json.loads(path.read_text())
        except (OSError, ValueError):
            self.state = {}
        if self.state.get("api_url") != api_url:  # another API knows nothing of those tasks
            self.state = {"api_url": api_url, "tasks": {}}

    def task_id(self, rel: str, signature: str) -> str | None:
        """The task of this file, unless the file (or the model asked for) changed since it
        was submitted."""
        known = self.state["tasks"].get(rel)
        return known["task_id"] if known and known.get("sig") == signature else None

    def remember(self, rel: str, task_id: str, signature: str) -> None:
        self.state["tasks"][rel] = {"task_id": task_id, "sig": signature}
        atomic_write(self.path, [json.dumps(self.state).encode()])


def upload_through_api(items: list[Item], client: Client, state_path: Path, asked: Recipe = Recipe()) -> None:
    """Submit each file through the API with its model and options, or reuse its task from an
    earlier run that asked for the same."""
    state = StateFile(state_path, client.api_url)
    bar = Progress("upload", len(items))
    try:
        for n, item in enumerate(items, 1):
            st = item.path.stat()
            signature = f"{st.st_size}:{st.st_mtime_ns}" + (f":{asked.signature}" if asked.signature else "")
            item.task_id = state.task_id(item.rel, signature)
            if item.task_id is None:
                try:
                    item.task_id = client.submit(item.path, model=asked.model or None, options=asked.options)
                except ClientError as exc:
                    if not exc.rejected:
                        raise
                    item.error = f"rejected: {exc}"
                else:
                    state.remember(item.rel, item.task_id, signature)
            bar.update(n)
    finally:
        bar.close()
