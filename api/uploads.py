"""Getting an image in: `POST /api/v1/tasks/segmentation` (multipart) and `POST /api/v1/uploads`
(a presigned POST or PUT straight to MinIO).

The API never enqueues work: it records the task, stores (or presigns) the object under
``input/``, and MinIO's bucket notification for that object starts processing, exactly as
for objects uploaded with `mc cp`.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path
from typing import Any

import falcon

from maskflow.api.deps import API, Deps
from maskflow.api.errors import ApiError, bad_request
from maskflow.infra.domain import options
from maskflow.infra.domain.catalog import METADATA_KEY, UnknownModel, accepted_names, check_name
from maskflow.infra.domain.clock import utc_iso
from maskflow.infra.domain.formats import (CONTENT_TYPES, EXTENSIONS, SUPPORTED_FORMATS, ImageRejected,
                                           UnsupportedFormat, check_header)
from maskflow.infra.domain.outputs import INPUT_PREFIX
from maskflow.infra.stores.tasks import Task, new_task_id
from maskflow.infra.wiring.outbound import CALLBACK_METADATA_KEY, MAX_URL_BYTES, BadCallback, check_url

log = logging.getLogger("maskflow.api")

# A presigned upload that never arrives fails this long after its URL expired.
UPLOAD_GRACE_S = 120
READ_CHUNK = 256 * 1024
# Multipart framing around the file (boundaries, part headers, small extra fields).
MULTIPART_SLACK = 64 * 1024
MAX_FIELD_BYTES = 256  # a model name or an option's value; longer is refused by its check


def _model_name(value: Any) -> str:
    """A requested model name, checked against the catalogue: 400 listing the valid ones."""
    if not isinstance(value, str):
        raise bad_request(f"model must be a string, one of {', '.join(accepted_names())}")
    try:
        return check_name(value)
    except UnknownModel as exc:
        raise bad_request(str(exc), code="unknown_model") from None

# What a presigned upload may declare: exactly the formats the worker decodes.
UPLOAD_TYPES = {CONTENT_TYPES[fmt]: EXTENSIONS[fmt] for fmt in SUPPORTED_FORMATS}
# A file name: no control characters (a newline must not end up in an object key).
FILENAME_RE = re.compile(r"[^\x00-\x1f\x7f]{1,255}")
_EXT_RE = re.compile(r"[a-z0-9]{1,8}")


def read_form(req: falcon.Request, limit: int, fields: tuple[str, ...]) -> tuple[bytes, dict[str, str]]:
    """The multipart form's `file` (at most `limit` bytes) and its text `fields`; any other
    field is a 400 naming it, unless the file is missing, the contract's own 400."""
    kind = (req.content_type or "").split(";")[0].strip().lower()
    if kind in ("", "application/x-www-form-urlencoded"):
        # a form (or nothing) without the file: the contract's "missing file" case
        raise bad_request("send the image as multipart/form-data with a field named 'file'",
                          code="missing_file")
    if kind != "multipart/form-data":
        raise ApiError(415, "unsupported_media_type",
                       "send the image as multipart/form-data with a field named 'file'")
    data, texts, unknown = None, {}, []
    for part in req.get_media():
        if part.name in fields:
            cap = MAX_URL_BYTES if part.name == "callback_url" else MAX_FIELD_BYTES
            texts[part.name] = part.stream.read(cap + 1).decode("utf-8", "replace")
            continue
        if part.name != "file":
            unknown.append(part.name)  # its bytes are skipped by the parser, not buffered
            continue
        if data is not None:
            raise bad_request("the multipart form has more than one field named 'file'")
        # part.stream is unbounded: read at most limit + 1 bytes to detect oversize.
        chunks, size = [], 0
        while True:
            chunk = part.stream.read(min(READ_CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "payload_too_large", f"the file exceeds the upload limit of {limit} bytes")
        data = b"".join(chunks)
    if data is None:
        raise bad_request("the multipart form has no field named 'file'", code="missing_file")
    if unknown:
        shown = ", ".join(repr(name[:40]) for name in unknown[:5])
        raise bad_request(f"unknown form field(s) {shown}; the fields are file, {', '.join(fields)}",
                          code="bad_options")
    return data, texts


def upload_metadata(model: str, texts: dict[str, str]) -> dict[str, str]:
    """The user metadata an upload carries: its model and options, every problem a 400."""
    try:
        given = options.parse(texts).texts(texts)
    except options.BadOptions as exc:
        raise bad_request(str(exc), code="bad_options") from None
    return {**({METADATA_KEY: model} if model else {}), **options.metadata(given)}


def callback_metadata(deps: Deps, url: Any) -> dict[str, str]:
    """A requested callback_url as the upload's metadata (the worker reads it from the event)."""
    if url is None:
        return {}
    try:
        check_url(url, deps.cfg.webhook)
    except BadCallback as exc:
        raise bad_request(str(exc), code="bad_callback_url") from None
    return {CALLBACK_METADATA_KEY: url}


def image_format(data: bytes, max_pixels: int) -> str:
    """The upload's format from its headers and container; decoding the pixels is the worker's job."""
    try:
        return check_header(data, max_pixels)[0]
    except UnsupportedFormat as exc:
        raise ApiError(415, "unsupported_image", str(exc)) from None
    except ImageRejected as exc:
        raise ApiError(422, "invalid_image", f"{exc} ({exc.reason})") from None


def store(deps: Deps, data: bytes, fmt: str, metadata: dict[str, str]) -> Task:
    """Record a pending task, then store its object; MinIO's event for it starts the work."""
    task_id = new_task_id()
    key = f"{INPUT_PREFIX}{task_id}.{EXTENSIONS[fmt]}"
    # Record first: the worker maps key -> task through this index when the event arrives.
    task = deps.tasks.create_pending(task_id, key, callback_url=metadata.get(CALLBACK_METADATA_KEY, ""))
    try:
        deps.objects.put(key, data, CONTENT_TYPES[fmt], metadata or None)
    except Exception as exc:  # noqa: BLE001 - any storage failure means no event will come
        log.warning("storing %s failed: %s: %s", key, type(exc).__name__, exc)
        deps.tasks.fail_pending(task_id, "storing the upload failed; submit it again")
        raise ApiError(503, "storage_unavailable", "the image could not be stored; retry shortly",
                       headers={"Retry-After": "5"}) from None
    return task


class SubmitResource:
    """POST /api/v1/tasks/segmentation: multipart form, field `file`, optional fields `model`
    and the options (infra/domain/options.py)."""

    FIELDS = ("model", "callback_url", *options.NAMES)

    def __init__(self, deps: Deps):
        self.deps = deps
        self.limit = deps.cfg.task.max_upload_bytes
        self.max_body_bytes = self.limit + MULTIPART_SLACK  # enforced by api.middleware.BodyLimit

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        data, texts = read_form(req, self.limit, self.FIELDS)
        model = _model_name(texts.pop("model")) if "model" in texts else ""
        callback = callback_metadata(self.deps, texts.pop("callback_url", None))
        metadata = {**upload_metadata(model, texts), **callback}
        task = store(self.deps, data, image_format(data, self.deps.cfg.task.max_pixels), metadata)
        resp.status = falcon.HTTP_202
        resp.location = f"{API}/tasks/{task.task_id}"
        resp.media = {"task_id": task.task_id, "status": "pending", "created_at": task.created_at}


def _as_text(value: str | bool | int) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


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
        given = doc.get("options", {})
        if not isinstance(given, dict) or not all(isinstance(v, (str, bool, int)) for v in given.values()):
            raise bad_request("options must be an object of option names and values", code="bad_options")
        metadata = {**upload_metadata(model, {name: _as_text(value) for name, value in given.items()}),
                    **callback_metadata(self.deps, doc.get("callback_url"))}
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
        key = f"{INPUT_PREFIX}{task_id}.{ext}"
        expiry = cfg.api.presign_expiry
        expires = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(seconds=expiry)
        self.deps.tasks.create_pending(task_id, key, upload_deadline=expires.timestamp() + UPLOAD_GRACE_S,
                                       callback_url=metadata.get(CALLBACK_METADATA_KEY, ""))
        out: dict[str, Any] = {"task_id": task_id, "method": method, "object_key": key,
                               "expires_at": utc_iso(expires.timestamp())}
        if method == "POST":
            url, fields = self.deps.objects.presigned_post(key, content_type,
                                                           cfg.task.max_upload_bytes, expires, metadata)
            out.update(url=url, fields=fields)
        else:
            # The headers are signed into the URL: MinIO refuses any other size, type, model or
            # option.
            out.update(url=self.deps.objects.presigned_put(key, expiry, content_type, size, metadata),
                       headers={"Content-Type": content_type, "Content-Length": str(size),
                                **{f"X-Amz-Meta-{k.title()}": v for k, v in metadata.items()}})
        resp.status = falcon.HTTP_201
        resp.location = f"{API}/tasks/{task_id}"
        resp.media = out
