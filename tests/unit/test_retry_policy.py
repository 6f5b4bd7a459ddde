"""Which faults the worker retries (transient) and which fail the task at once."""
from __future__ import annotations

import pytest
import redis
import urllib3
from minio.error import InvalidResponseError, S3Error, ServerError

from maskflow.infra.domain.formats import CorruptImage
from maskflow.infra.stores.objects import ObjectMissing
from maskflow.infra.wiring.retries import is_transient


def s3_error(code: str, status: int) -> S3Error:
    return S3Error(urllib3.response.HTTPResponse(status=status), code, "message", "/r", "id", "host")


@pytest.mark.parametrize("exc", [
    redis.ConnectionError("refused"), redis.TimeoutError("slow"),
    urllib3.exceptions.ProtocolError("connection reset"),
    urllib3.exceptions.NewConnectionError(None, "refused"),
    ConnectionResetError(), TimeoutError(),
    ServerError("server failed with HTTP status code 503", 503),
    s3_error("SlowDown", 503), s3_error("InternalError", 500),
    s3_error("ClientDisconnected", 499), s3_error("RequestTimeout", 400),
    # what a GET gets from MinIO while it shuts down
    InvalidResponseError(503, "text/plain; charset=utf-8", "http: Server closed"),
])
def test_transient(exc):
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [
    s3_error("NoSuchKey", 404), s3_error("AccessDenied", 403), s3_error("InvalidAccessKeyId", 403),
    ObjectMissing("gone"), CorruptImage("broken"), ValueError("bug"), redis.ResponseError("WRONGTYPE"),
    InvalidResponseError(400, "text/plain", "bad request"),
])
def test_permanent(exc):
    assert not is_transient(exc)
