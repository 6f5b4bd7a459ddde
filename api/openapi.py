"""The OpenAPI 3.1 document served at /api/v1/openapi.json; it describes what the resources do.

Built as a dict (not a static file) so limits from the config appear in it.
"""
from __future__ import annotations

from maskflow.api.middleware import DEFAULT_MAX_BODY
from maskflow.api import rembg
from maskflow.api.uploads import MULTIPART_SLACK, UPLOAD_TYPES
from maskflow.infra.wiring.outbound import MAX_URL_BYTES
from maskflow.infra.domain import options
from maskflow.infra.domain.catalog import DEFAULT, accepted_names, names
from maskflow.infra.domain.outputs import RESULT_KINDS
from maskflow.infra.wiring.config import Config

_NULLABLE_STR = {"type": ["string", "null"]}
_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_STATUS = {"type": "string", "enum": ["pending", "processing", "completed", "failed"]}


def _model() -> dict:
    return {"type": "string", "enum": list(accepted_names()),
            "description": f"The model to segment with (GET /api/v1/models; an alias names the same "
                           f"model); {DEFAULT} when absent"}


def _options() -> dict:
    """The options as a form's or an object's properties, with what needs what."""
    return {"properties": dict(options.SCHEMAS),
            "allOf": [{"if": {"required": [name]},
                       "then": {"required": [other], "properties": {other: {"const": value}}}}
                      for name, (other, value) in options.NEEDS.items()]}


def _callback() -> dict:
    return {"type": "string", "format": "uri", "maxLength": MAX_URL_BYTES,
            "description": "https URL (http where webhook.allow_insecure) that gets the task, signed "
                           "(Maskflow-Signature), once it is completed or failed; not a private address"}


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(description: str, ref: str, headers: dict | None = None) -> dict:
    out = {"description": description,
           "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}
    if headers:
        out["headers"] = headers
    return out


_COMMON = {"401": _error("Bearer token required (only when api.token is set)"),
           "503": _error("Redis or MinIO unavailable")}
_LOCATION = {"Location": {"description": "URL of the task", "schema": {"type": "string"}}}
_LIMIT = {"name": "limit", "in": "query", "required": False,
          "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}


def _wait(what: str) -> dict:
    return {"name": "wait", "in": "query", "required": False, "description": f"Hold the request up to this many "
            f"seconds {what}", "schema": {"type": "number", "minimum": 0, "maximum": 30}}


def document(cfg: Config) -> dict:
    limit = cfg.task.max_upload_bytes
    schemas = {
        "ErrorDetail": {
            "type": "object", "required": ["status", "code", "message"],
            "additionalProperties": False,
            "properties": {"status": {"type": "integer"}, "code": {"type": "string"},
                           "message": {"type": "string"}}},
        "Error": {
            "type": "object", "required": ["error"],
            "properties": {"error": {"$ref": "#/components/schemas/ErrorDetail"}}},
        "RembgError": {
            "type": "object", "required": ["detail"], "additionalProperties": False,
            "properties": {"detail": {"type": "string"}},
            "description": "rembg's own error shape, on its route"},
        "Submitted": {
            "type": "object", "required": ["task_id", "status", "created_at"],
            "additionalProperties": False,
            "properties": {"task_id": {"type": "string"},
                           "status": {"type": "string", "const": "pending"},
                           "created_at": _TIME}},
        "Task": {
            "type": "object", "additionalProperties": False,
            "required": ["task_id", "status", "result", "error", "created_at", "completed_at"],
            "properties": {
                "task_id": {"type": "string"},
                "status": _STATUS,
                "result": {"type": "object", "additionalProperties": False,
                           "required": [kind.api_field for kind in RESULT_KINDS],
                           "properties": {kind.api_field: {**_NULLABLE_STR, "description": kind.what}
                                          for kind in RESULT_KINDS},
                           "description": "Presigned GET URLs; null until the task is completed"},
                "error": {**_NULLABLE_STR, "description": "Why the task failed; null otherwise"},
                "created_at": _TIME,
                "completed_at": _NULLABLE_TIME,
                "model": {"type": "string", "enum": list(names()),
                          "description": "Once completed, the model that made the result, for "
                                         "tasks that named one (absent otherwise: the default "
                                         f"{DEFAULT} model, and the original contract's shape)"},
                "options": {"type": "object", "additionalProperties": {"type": "string"},
                            "description": "Once completed, the options the task asked for beyond "
                                           "the defaults (absent when none: the contract's shape)"},
                "callback": {"type": "object", "required": ["status", "attempts", "last_error"],
                             "properties": {"status": {"type": "string",
                                                       "enum": ["pending", "retrying", "delivered", "failed"]},
                                            "attempts": {"type": "integer"}, "last_error": _NULLABLE_STR},
                             "description": "The webhook's delivery, for tasks with a callback_url"}}},
        "ResultEntry": {
            "type": "object", "required": ["id", "task_id", "status", "input_key"],
            "description": "One terminal transition: the record's fields as text, result keys not URLs",
            "properties": {"id": {"type": "string"}, "task_id": {"type": "string"}, "status": _STATUS,
                           "input_key": {"type": "string"}, "error": {"type": "string"},
                           "options": {"type": "object"}, "attempts": {"type": "integer"}}},
        "Results": {
            "type": "object", "required": ["entries", "next"],
            "properties": {"entries": {"type": "array", "items": {"$ref": "#/components/schemas/ResultEntry"}},
                           "next": {"type": "string", "description": "pass as `after` for the next page"},
                           "batch": {"type": "object",
                                     "description": "with prefix, once the page reached the newest entry: the "
                                                    "batch's counts, which count no entry after `next`"}}},
        "UploadRequest": {
            "type": "object", "required": ["filename", "content_type"],
            "properties": {
                "filename": {"type": "string", "minLength": 1, "maxLength": 255,
                             "not": {"pattern": "[\\x00-\\x1f\\x7f]"},
                             "description": "No control characters"},
                "content_type": {"type": "string", "enum": list(UPLOAD_TYPES),
                                 "description": "The formats the service decodes; the "
                                                "upload must carry exactly this type"},
                "size": {"type": "integer", "minimum": 1, "maximum": limit,
                         "description": "Bytes; required with PUT, whose URL admits exactly "
                                        "this Content-Length"},
                "method": {"type": "string", "enum": ["POST", "PUT"], "default": "POST"},
                "model": {**_model(), "description": _model()["description"] + "; signed into the "
                          "upload, which must carry it as x-amz-meta-model"},
                "options": {"type": "object", "additionalProperties": False, **_options(),
                            "description": "Signed into the upload, which must carry each as "
                                           "x-amz-meta-<name> (crop_margin as crop-margin)"},
                "callback_url": {**_callback(), "description": _callback()["description"]
                                 + "; signed into the upload as x-amz-meta-callback-url"}},
            "if": {"required": ["method"], "properties": {"method": {"const": "PUT"}}},
            "then": {"required": ["size"]}},
        "Upload": {
            "type": "object",
            "required": ["task_id", "method", "url", "object_key", "expires_at"],
            "properties": {
                "task_id": {"type": "string"},
                "method": {"type": "string", "enum": ["POST", "PUT"]},
                "url": {"type": "string"},
                "fields": {"type": "object", "additionalProperties": {"type": "string"},
                           "description": "POST: form fields to send before the file field"},
                "headers": {"type": "object", "additionalProperties": {"type": "string"},
                            "description": "PUT: headers to send with the body (Content-Type "
                                           "and Content-Length are signed)"},
                "object_key": {"type": "string"},
                "expires_at": _TIME}},
        "Batch": {
            "type": "object",
            "required": ["prefix", "total", "done", "counts", "failures", "offset", "limit",
                         "failures_total"],
            "properties": {
                "prefix": {"type": "string"},
                "total": {"type": "integer"},
                "done": {"type": "integer"},
                "counts": {"type": "object", "required": ["pending", "processing", "completed", "failed"],
                           "additionalProperties": {"type": "integer"}},
                "failures": {"type": "array", "items": {
                    "type": "object", "required": ["task_id", "key", "error", "completed_at"],
                    "properties": {"task_id": {"type": "string"}, "key": {"type": "string"},
                                   "error": _NULLABLE_STR, "completed_at": _NULLABLE_TIME}}},
                "offset": {"type": "integer"},
                "limit": {"type": "integer"},
                "failures_total": {"type": "integer"}}},
        "Models": {
            "type": "object", "required": ["default", "names", "models"],
            "properties": {
                "default": {"type": "string", "enum": list(names())},
                "names": {"type": "array", "items": {"type": "string", "enum": list(accepted_names())},
                          "description": "Every name a task may ask for, aliases included"},
                "models": {"type": "array", "items": {
                    "type": "object",
                    "required": ["name", "aliases", "input_size", "good_for", "cost", "quality",
                                 "license", "source", "default", "workers"],
                    "properties": {"name": {"type": "string", "enum": list(names())},
                                   "aliases": {"type": "array", "items": {"type": "string"}},
                                   "input_size": {"type": "array", "items": {"type": "integer"},
                                                  "minItems": 2, "maxItems": 2,
                                                  "description": "width, height"},
                                   "good_for": {"type": "string"},
                                   "cost": {"type": "string", "description": "measured, one core"},
                                   "quality": {"type": "string", "description": "as its authors publish"},
                                   "license": {"type": "string"}, "source": {"type": "string"},
                                   "default": {"type": "boolean"},
                                   "workers": {"type": "integer", "minimum": 0,
                                               "description": "ready workers serving it now"}}}}}},
        "Ready": {
            "type": "object", "required": ["status", "checks"],
            "properties": {"status": {"type": "string", "enum": ["ready", "not_ready"]},
                           "checks": {"type": "object", "additionalProperties": {"type": "string"}},
                           "error": {"$ref": "#/components/schemas/ErrorDetail"}}},
    }
    task_id_param = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "maskflow", "version": "1.0.0",
                 "description": "Image segmentation: submit an image (or upload it to MinIO "
                                "under input/), then poll the task. Every error body has the "
                                "shape of the Error schema, including the server's own answers "
                                "to a malformed request (400), a body over the route's limit "
                                f"(413; at most {limit + MULTIPART_SLACK} bytes for a "
                                f"submission, {DEFAULT_MAX_BODY} elsewhere) or request headers "
                                "that are too large (431)."},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "Only when api.token is set"}}},
        "security": [{}, {"bearer": []}],
        "paths": {
            "/api/v1/tasks/segmentation": {"post": {
                "operationId": "submitSegmentation",
                "summary": "Submit an image (multipart field `file`)",
                "requestBody": {"required": True, "content": {"multipart/form-data": {
                    "schema": {"type": "object", "required": ["file"], "additionalProperties": False,
                               **_options(),
                               "properties": {"file": {"type": "string", "minLength": 1,
                                                       "contentMediaType": "application/octet-stream",
                                                       "description": f"JPEG, PNG, WebP, BMP, TIFF or GIF; at most {limit} bytes"},
                                              "model": _model(), "callback_url": _callback(),
                                              **options.SCHEMAS}}}}},
                "responses": {
                    "202": _json("Accepted; processing starts from the storage event", "Submitted",
                                 _LOCATION),
                    "400": _error("No `file` field, two of them, a malformed form, an unknown field or "
                                  "model, or options that are bad or make no sense together"),
                    "413": _error(f"File larger than {limit} bytes"),
                    "415": _error("Not multipart/form-data, or not a supported image format"),
                    "422": _error("A supported format, but empty, corrupt, truncated or too many pixels"),
                    **_COMMON}}},
            "/api/v1/tasks/{task_id}": {"get": {
                "operationId": "getTask",
                "parameters": [task_id_param,
                               _wait("until the task is completed or failed")],
                "responses": {"200": _json("The task", "Task"),
                              "400": _error("Bad wait value"),
                              "404": _error("No such task"), **_COMMON}}},
            "/api/v1/tasks": {"get": {
                "operationId": "findTaskByKey",
                "parameters": [{"name": "key", "in": "query", "required": True,
                                "schema": {"type": "string", "minLength": 1},
                                "example": "input/photo.jpg"}],
                "responses": {"200": _json("The task of that object", "Task"),
                              "400": _error("key missing"),
                              "404": _error("No task for that key"), **_COMMON}}},
            "/api/v1/uploads": {"post": {
                "operationId": "createUpload",
                "summary": "Presign a direct upload to MinIO (POST policy by default, or PUT)",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/UploadRequest"}}}},
                "responses": {"201": _json("Presigned upload; the task starts when the object lands",
                                           "Upload", _LOCATION),
                              "400": _error("Malformed body, PUT without size, or an unknown model"),
                              "413": _error(f"Request body over {DEFAULT_MAX_BODY} bytes"),
                              "415": _error("content_type is not one of the supported types"),
                              "422": _error(f"size over {limit} bytes"), **_COMMON}}},
            "/api/v1/results": {"get": {
                "operationId": "getResults",
                "summary": "The results stream: entries after an id (JSON), or server-sent events "
                           "with Accept: text/event-stream (resume with Last-Event-ID)",
                "parameters": [
                    {"name": "after", "in": "query", "required": False,
                     "schema": {"type": "string", "pattern": r"^(\d{1,19}(-\d{1,19})?|\$)$"},
                     "description": "a stream id, 0 for every entry kept; default: only new ones"},
                    {"name": "prefix", "in": "query", "required": False,
                     "schema": {"type": "string", "pattern": "^input/"},
                     "description": "only tasks under this input/ prefix, with the batch's counts"},
                    _LIMIT, _wait("for the first entry")],
                "responses": {"200": {**_json("Entries and the id to continue after", "Results"),
                                      "content": {**_json("", "Results")["content"],
                                                  "text/event-stream": {"schema": {"type": "string"}}}},
                              "400": _error("Bad after, prefix, limit or wait"),
                              "503": _error("Too many open streams, or Redis unavailable"),
                              "401": _COMMON["401"]}}},
            "/api/v1/batches/{prefix}": {"get": {
                "operationId": "getBatch",
                "description": "Summary of all tasks under a prefix such as input/b1/ "
                               "(URL-encoded or as the rest of the path).",
                "parameters": [{"name": "prefix", "in": "path", "required": True,
                                "schema": {"type": "string"}},
                               {"name": "offset", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 0, "maximum": 10000000}},
                               _LIMIT],
                "responses": {"200": _json("Batch summary", "Batch"),
                              "400": _error("Bad offset or limit"),
                              "404": _error("No tasks under that prefix"), **_COMMON}}},
            "/api/remove": {"post": rembg.openapi_operation(limit, _COMMON["401"])},
            "/api/v1/models": {"get": {
                "operationId": "listModels",
                "summary": "The models a task may name, with what each is good at",
                "responses": {"200": _json("The served models", "Models"), **_COMMON}}},
            "/api/v1/openapi.json": {"get": {
                "operationId": "openapi",
                "responses": {"200": {"description": "This document",
                                      "content": {"application/json": {"schema": {"type": "object"}}}},
                              "401": _COMMON["401"]}}},
            "/healthz": {"get": {
                "operationId": "healthz", "security": [],
                "responses": {"200": {"description": "The process is alive", "content": {
                    "application/json": {"schema": {"type": "object", "required": ["status"],
                                                    "properties": {"status": {"const": "ok"}}}}}}}}},
            "/readyz": {"get": {
                "operationId": "readyz", "security": [],
                "responses": {"200": _json("Redis and MinIO reachable, bucket present", "Ready"),
                              "503": _json("Something is down; `checks` says what", "Ready")}}},
            "/metrics": {"get": {
                "operationId": "metrics", "security": [],
                "responses": {"200": {"description": "Prometheus text format",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        },
    }
