"""HTTP resources: thin adapters over TaskStore and ObjectStore, which they get in `Deps`.

The API never enqueues work: it records the task, stores (or presigns) the object under
``input/``, and MinIO's bucket notification for that object starts processing, exactly as
for objects uploaded with `mc cp`.
"""
from __future__ import annotations

import datetime as dt
import logging
import mimetypes
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import falcon
import redis

from maskflow.api import metrics as metrics_mod
from maskflow.api.errors import ApiError, bad_request, body as error_body, not_found
from maskflow.infra.domain.catalog import CATALOG, DEFAULT, METADATA_KEY, NAMES, UnknownModel, check_name
from maskflow.infra.domain.clock import utc_iso
from maskflow.infra.wiring.config import Config
from maskflow.infra.domain.formats import (CONTENT_TYPES, EXTENSIONS, SUPPORTED_FORMATS, ImageRejected,
                                    UnsupportedFormat, check_header)
from maskflow.infra.stores.objects import ObjectStore
from maskflow.infra.stores.tasks import Task, TaskStore, new_task_id

log = logging.getLogger("maskflow.api")

API = "/api/v1"
STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_WAIT_S = 30
# A presigned upload that never arrives fails this long after its URL expired.
UPLOAD_GRACE_S = 120
READ_CHUNK = 256 * 1024

# What a presigned upload may declare: exactly the formats the worker decodes.
UPLOAD_TYPES = {CONTENT_TYPES[fmt]: EXTENSIONS[fmt] for fmt in SUPPORTED_FORMATS}
# A file name: no control characters (a newline must not end up in an object key).
FILENAME_RE = re.compile(r"[^\x00-\x1f\x7f]{1,255}")
_EXT_RE = re.compile(r"[a-z0-9]{1,8}")


@dataclass
class Deps:
    cfg: Config
    tasks: TaskStore
    objects: ObjectStore
    redis: redis.Redis
    # name -> probe raising on failure; each must answer within ~0.5 s
    readiness: dict[str, Callable[[], Any]] = field(default_factory=dict)
    http_metrics: metrics_mod.HttpMetrics = field(default_factory=metrics_mod.HttpMetrics)


def task_body(task: Task, objects: ObjectStore, expiry: int) -> dict:
    """Exactly the original contract's shape (design section 4.2)."""
    done = task.status == "completed" and task.output_key and task.mask_key
    body = {
        "task_id": task.task_id,
        "status": task.status,
        "result": {
            "segmented_image_url": objects.presigned_get(task.output_key, expiry) if done else None,
            "mask_image_url": objects.presigned_get(task.mask_key, expiry) if done else None,
        },
        "error": task.error if task.status == "failed" else None,
        "created_at": task.created_at,
        "completed_at": task.completed_at if task.terminal else None,
    }
    if done and task.model:
        body["model"] = task.model  # only for tasks that named a model: else the contract's shape
    return body


def _int_param(req: falcon.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = req.get_param(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"query parameter {name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise bad_request(f"query parameter {name} must be between {lo} and {hi}, got {value}")
    return value


# -- submission --------------------------------------------------------------------------------
class SubmitResource:
    """POST /api/v1/tasks/segmentation: multipart form, field `file`, optional field `model`."""

    def __init__(self, deps: Deps):
        self.deps = deps
        self.limit = deps.cfg.task.max_upload_bytes
        self.max_body_bytes = self.limit + MULTIPART_SLACK  # enforced by api.middleware.BodyLimit

    def _read_form(self, req: falcon.Request) -> tuple[bytes, str]:
        """The file's bytes and the requested model name ('' when none)."""
        kind = (req.content_type or "").split(";")[0].strip().lower()
        if kind in ("", "application/x-www-form-urlencoded"):
            # a form (or nothing) without the file: the contract's "missing file" case
            raise bad_request("send the image as multipart/form-data with a field named 'file'",
                              code="missing_file")
        if kind != "multipart/form-data":
            raise ApiError(415, "unsupported_media_type",
                           "send the image as multipart/form-data with a field named 'file'")
        data, model = None, ""
        for part in req.get_media():
            if part.name == "model":
                model = _model_name(part.stream.read(MAX_MODEL_NAME + 1).decode("utf-8", "replace"))
                continue
            if part.name != "file":
                continue  # other fields are skipped by the parser without buffering them
            if data is not None:
                raise bad_request("the multipart form has more than one field named 'file'")
            # part.stream is unbounded: read at most limit + 1 bytes to detect oversize.
            chunks, size = [], 0
            while True:
                chunk = part.stream.read(min(READ_CHUNK, self.limit + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > self.limit:
                    raise self._too_large()
            data = b"".join(chunks)
        if data is None:
            raise bad_request("the multipart form has no field named 'file'", code="missing_file")
        return data, model

    def _too_large(self) -> ApiError:
        return ApiError(413, "payload_too_large",
                        f"the file exceeds the upload limit of {self.limit} bytes")

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        data, model = self._read_form(req)
        try:
            # Headers and container only: decoding the pixels is the worker's job.
            fmt, _w, _h, _orientation = check_header(data, self.deps.cfg.task.max_pixels)
        except UnsupportedFormat as exc:
            raise ApiError(415, "unsupported_image", str(exc)) from None
        except ImageRejected as exc:
            raise ApiError(422, "invalid_image", f"{exc} ({exc.reason})") from None
        task_id = new_task_id()
        key = f"input/{task_id}.{EXTENSIONS[fmt]}"
        # Record first: the worker maps key -> task through this index when the event arrives.
        task = self.deps.tasks.create_pending(task_id, key)
        try:
            self.deps.objects.put(key, data, CONTENT_TYPES[fmt], {METADATA_KEY: model} if model else None)
        except Exception as exc:  # noqa: BLE001 - any storage failure means no event will come
            log.warning("storing %s failed: %s: %s", key, type(exc).__name__, exc)
            self.deps.tasks.fail_pending(task_id, "storing the upload failed; submit it again")
            raise ApiError(503, "storage_unavailable",
                           "the image could not be stored; retry shortly",
                           headers={"Retry-After": "5"}) from None
        resp.status = falcon.HTTP_202
        resp.location = f"{API}/tasks/{task_id}"
        resp.media = {"task_id": task_id, "status": "pending", "created_at": task.created_at}


# Multipart framing around the file (boundaries, part headers, small extra fields).
MULTIPART_SLACK = 64 * 1024
MAX_MODEL_NAME = 64


def _model_name(value: Any) -> str:
    """A requested model name, checked against the catalogue: 400 listing the valid ones."""
    if not isinstance(value, str):
        raise bad_request(f"model must be a string, one of {', '.join(NAMES)}")
    try:
        return check_name(value)
    except UnknownModel as exc:
        raise bad_request(str(exc), code="unknown_model") from None


class ModelsResource:
    """GET /api/v1/models: the models a task may name."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"default": DEFAULT, "models": [
            {"name": m.name, "input_size": list(m.input_size), "good_for": m.good_for,
             "license": m.license, "source": m.source, "default": m.name == DEFAULT}
            for m in CATALOG.values()]}


# -- presigned uploads -------------------------------------------------------------------------
class UploadsResource:
    """POST /api/v1/uploads: presigned POST (default) or PUT straight to MinIO."""

    def __init__(self, deps: Deps):
        self.deps = deps

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        cfg = self.deps.cfg
        doc = req.get_media()
        if not isinstance(doc, dict):
            raise bad_request("the body must be a JSON object")
        filename = doc.get("filename")
        content_type = doc.get("content_type")
        size = doc.get("size")
        method = doc.get("method", "POST")
        model = _model_name(doc["model"]) if "model" in doc else ""
        metadata = {METADATA_KEY: model} if model else None
        if not isinstance(filename, str) or not FILENAME_RE.fullmatch(filename):
            raise bad_request("filename must be 1 to 255 characters, without control characters")
        if not isinstance(content_type, str) or not content_type:
            raise bad_request("content_type must be a string such as image/jpeg")
        if content_type not in UPLOAD_TYPES:
            raise ApiError(415, "unsupported_media_type",
                           f"content_type must be one of {', '.join(UPLOAD_TYPES)}, "
                           f"got {content_type!r}")
        if isinstance(size, float) and size.is_integer():
            size = int(size)  # JSON does not tell 267034.0 from 267034
        if "size" in doc and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise bad_request("size must be a positive integer (bytes)")
        if size is not None and size > cfg.task.max_upload_bytes:
            # 422, not 413: this small request is fine, the file it announces is not.
            raise ApiError(422, "file_too_large",
                           f"size {size} exceeds the upload limit of {cfg.task.max_upload_bytes} bytes")
        if method not in ("POST", "PUT"):
            raise bad_request("method must be POST or PUT")
        if method == "PUT" and size is None:
            raise bad_request("size is required with method PUT: it is signed into the URL")

        ext = Path(filename).suffix.lower().lstrip(".")
        if not _EXT_RE.fullmatch(ext):
            ext = UPLOAD_TYPES[content_type]
        task_id = new_task_id()
        key = f"input/{task_id}.{ext}"
        expiry = cfg.api.presign_expiry
        expires = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(seconds=expiry)
        self.deps.tasks.create_pending(task_id, key,
                                       upload_deadline=expires.timestamp() + UPLOAD_GRACE_S)
        out: dict[str, Any] = {"task_id": task_id, "method": method, "object_key": key,
                               "expires_at": utc_iso(expires.timestamp())}
        if method == "POST":
            url, fields = self.deps.objects.presigned_post(key, content_type,
                                                           cfg.task.max_upload_bytes, expires, metadata)
            out.update(url=url, fields=fields)
        else:
            # The headers are signed into the URL: MinIO refuses any other size, type or model.
            out.update(url=self.deps.objects.presigned_put(key, expiry, content_type, size, metadata),
                       headers={"Content-Type": content_type, "Content-Length": str(size),
                                **{f"X-Amz-Meta-{k.title()}": v for k, v in (metadata or {}).items()}})
        resp.status = falcon.HTTP_201
        resp.location = f"{API}/tasks/{task_id}"
        resp.media = out


# -- reading tasks -----------------------------------------------------------------------------
class TaskResource:
    """GET /api/v1/tasks/{task_id}[?wait=N]"""

    def __init__(self, deps: Deps):
        self.deps = deps
        # Long-polls hold a waitress thread each: let at most half the threads wait, so a page
        # watching many files cannot starve everyone else; past that, answer at once.
        self.waiters = threading.BoundedSemaphore(max(1, deps.cfg.api.threads // 2))

    def _wait(self, task_id: str, seconds: float) -> Task | None:
        if not self.waiters.acquire(blocking=False):
            return self.deps.tasks.get(task_id)
        try:
            return self.deps.tasks.wait_for_terminal(task_id, seconds)
        finally:
            self.waiters.release()

    def on_get(self, req: falcon.Request, resp: falcon.Response, task_id: str) -> None:
        wait = req.get_param("wait")
        if wait is not None:
            try:
                seconds = float(wait)
            except ValueError:
                raise bad_request(f"wait must be a number of seconds, got {wait!r}") from None
            if not 0 <= seconds <= MAX_WAIT_S:  # also rejects nan and inf
                raise bad_request(f"wait must be between 0 and {MAX_WAIT_S} seconds")
            task = self._wait(task_id, seconds) if seconds else self.deps.tasks.get(task_id)
        else:
            task = self.deps.tasks.get(task_id)
        if task is None:
            raise not_found(f"no task with id {task_id!r}")
        resp.media = task_body(task, self.deps.objects, self.deps.cfg.api.presign_expiry)


class TaskLookupResource:
    """GET /api/v1/tasks?key=input/... : the task of an object uploaded directly."""

    def __init__(self, deps: Deps):
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        key = req.get_param("key")
        if not key:
            raise bad_request("query parameter key is required, e.g. ?key=input/photo.jpg")
        task = self.deps.tasks.find_by_key(key)
        if task is None:
            raise not_found(f"no task for object key {key!r}")
        resp.media = task_body(task, self.deps.objects, self.deps.cfg.api.presign_expiry)


class BatchResource:
    """GET /api/v1/batches/{prefix}: counts and failures of every task under a prefix."""

    def __init__(self, deps: Deps):
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response, prefix: str) -> None:
        # WSGI hands us the path decoded, so input%2Fb1%2F and input/b1/ arrive alike.
        prefix = prefix if prefix.endswith("/") else prefix + "/"
        offset = _int_param(req, "offset", 0, 0, 10_000_000)
        limit = _int_param(req, "limit", 100, 1, 1000)
        summary = self.deps.tasks.batch(prefix, offset=offset, limit=limit)
        if summary is None:
            raise not_found(f"no tasks under prefix {prefix!r}")
        resp.media = {
            "prefix": summary.prefix,
            "total": summary.total,
            "done": summary.done,
            "counts": summary.counts,
            "failures": [{"task_id": t.task_id, "key": t.input_key, "error": t.error,
                          "completed_at": t.completed_at} for t in summary.failures],
            "offset": offset,
            "limit": limit,
            "failures_total": summary.counts.get("failed", 0),
        }


# -- operations --------------------------------------------------------------------------------
class HealthResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class ReadyResource:
    """Redis and MinIO reachable and the bucket present; probes run in parallel, ~0.5 s each."""

    def __init__(self, deps: Deps):
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        checks: dict[str, str] = {}

        def run(name: str, probe: Callable[[], Any]) -> None:
            try:
                result = probe()
                checks[name] = "ok" if result is not False else "failed"
            except Exception as exc:  # noqa: BLE001 - any failure means not ready
                checks[name] = f"{type(exc).__name__}: {exc}"[:300]

        threads = [threading.Thread(target=run, args=item, daemon=True)
                   for item in self.deps.readiness.items()]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 1.0
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for name in self.deps.readiness:
            checks.setdefault(name, "timed out")
        down = sorted(name for name, state in checks.items() if state != "ok")
        if down:
            resp.status = falcon.HTTP_503
            resp.media = {**error_body(503, "not_ready", "not ready: " + ", ".join(
                f"{name} ({checks[name]})" for name in down)), "status": "not_ready",
                "checks": checks}
        else:
            resp.media = {"status": "ready", "checks": checks}


class MetricsResource:
    def __init__(self, deps: Deps):
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "text/plain; version=0.0.4; charset=utf-8"
        resp.text = metrics_mod.render(self.deps.http_metrics, self.deps.redis, self.deps.tasks,
                                       self.deps.cfg.queue.events_key)


class OpenApiResource:
    def __init__(self, document: dict):
        self.document = document

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.document


# -- web page ------------------------------------------------------------------------------
class StaticResource:
    """`/` -> api/static/index.html, `/static/<name>` -> api/static/<name> (if they exist)."""

    def __init__(self, root: Path = STATIC_DIR):
        self.root = root

    def _send(self, resp: falcon.Response, path: Path) -> None:
        try:
            path = path.resolve()
            path.relative_to(self.root.resolve())  # no escaping the folder with ../
        except (OSError, ValueError):
            raise not_found("no such file") from None
        if not path.is_file():
            raise not_found("no such file")
        resp.content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        resp.data = path.read_bytes()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._send(resp, self.root / "index.html")

    def on_get_file(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        self._send(resp, self.root / name)
