"""One JSON error shape for every route: ``{"error": {"status", "code", "message"}}``.

Resources raise `ApiError` (a falcon.HTTPError, so Falcon's own 404/405/400 go through the same
serializer); infrastructure outages (Redis, MinIO) become 503; anything else is a logged 500.
"""
from __future__ import annotations

import logging

import falcon
import redis
import urllib3.exceptions
from minio.error import MinioException

log = logging.getLogger("maskflow.api")

# Statuses -> our stable machine-readable codes for errors Falcon or waitress raise themselves.
_FALCON_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
    503: "service_unavailable",
}


class ApiError(falcon.HTTPError):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(falcon.code_to_http_status(status), title=code, description=message,
                         headers=headers)
        self.api_code = code


def default_code(status: int) -> str:
    """The machine-readable code of an error nobody gave a more specific one."""
    return _FALCON_CODES.get(status, "error")


def body(status: int, code: str, message: str) -> dict:
    return {"error": {"status": status, "code": code, "message": message}}


def bad_request(message: str, code: str = "bad_request") -> ApiError:
    return ApiError(400, code, message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def serialize(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    """Error serializer for the app: always JSON, whatever the client accepts."""
    status = exc.status_code
    code = getattr(exc, "api_code", None) or default_code(status)
    message = exc.description
    if not message and status == 404:
        message = f"no route for {req.method} {req.path}"
    elif not message and status == 405:
        message = f"method {req.method} is not allowed on {req.path}"
    message = message or exc.title or falcon.code_to_http_status(status)
    resp.media = body(status, code, message)
    resp.content_type = falcon.MEDIA_JSON


def _unavailable(req, resp, exc, params):
    log.warning("%s %s: dependency unavailable: %s: %s", req.method, req.path,
                type(exc).__name__, exc)
    raise ApiError(503, "service_unavailable",
                   "a backing service (Redis or MinIO) is unavailable; retry shortly",
                   headers={"Retry-After": "5"})


def _unexpected(req, resp, exc, params):
    if isinstance(exc, falcon.HTTPError):  # keep Falcon's own 4xx/5xx with our shape
        raise exc
    log.exception("%s %s: unhandled error", req.method, req.path)
    raise ApiError(500, "internal_error", "internal server error")


def install(app: falcon.App) -> None:
    # Falcon picks the most specific handler, so order of registration does not matter.
    app.add_error_handler(Exception, _unexpected)
    app.add_error_handler((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                           MinioException, urllib3.exceptions.HTTPError, ConnectionError),
                          _unavailable)
    app.set_error_serializer(serialize)
