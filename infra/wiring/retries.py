"""The one policy for transient faults, applied where a worker's stores are built.

Transient: MinIO or Redis unreachable, timeouts, 5xx, SlowDown.  They are retried with
exponential backoff and jitter, `worker.retry_attempts` times (about 45 s of outage with the
defaults), and never once the worker has nothing left to finish.  Everything else (an image
rejected, an object gone, a bug) propagates at once.

`with_retries(store, policy)` gives a view of a store whose every public method runs under the
policy, so the code that calls it reads as plain calls and no call site can forget a retry.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, TypeVar

import redis
import urllib3
from minio.error import InvalidResponseError, S3Error, ServerError
from tenacity import (Retrying, retry_if_exception, stop_after_attempt, stop_when_event_set, wait_exponential,
                      wait_random)

from maskflow.infra.wiring.config import WorkerConfig

log = logging.getLogger("maskflow.worker")

# S3 errors worth retrying besides any 5xx.  ClientDisconnected (MinIO's 499) is what an
# upload gets while MinIO shuts down.
TRANSIENT_S3_CODES = {"SlowDown", "RequestTimeout", "ClientDisconnected", "OperationTimedOut",
                      "XMinioServerNotInitialized"}

T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, urllib3.exceptions.HTTPError,
                        ConnectionError, TimeoutError, ServerError)):
        return True
    if isinstance(exc, S3Error):
        status = exc.response.status if exc.response is not None else 0
        return exc.code in TRANSIENT_S3_CODES or status >= 500
    if isinstance(exc, InvalidResponseError):
        # A 5xx without an XML body: MinIO shutting down answers 503 "http: Server closed".
        # minio-py (pinned < 8) keeps the status only in this attribute.
        return getattr(exc, "_code", 0) >= 500
    return False


def transient_policy(cfg: WorkerConfig, halt: threading.Event | None = None) -> Retrying:
    """Retry transient faults `cfg.retry_attempts` times, and not at all once `halt` is set."""
    stop = stop_after_attempt(cfg.retry_attempts)
    if halt is not None:
        stop = stop | stop_when_event_set(halt)
    return Retrying(
        reraise=True, retry=retry_if_exception(is_transient), stop=stop,
        wait=wait_exponential(multiplier=0.5, max=cfg.retry_max_wait) + wait_random(0, 0.5),
        before_sleep=lambda rs: log.warning("transient fault, retry %d: %s", rs.attempt_number,
                                            rs.outcome.exception() if rs.outcome else "?"))


class _Retried:
    """`target`'s public methods under `policy`; attributes that are not methods pass through."""

    def __init__(self, target: Any, policy: Retrying):
        self._target = target
        self._policy = policy

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name.startswith("_") or not callable(value):
            return value
        # Retrying.copy(): each call keeps its own attempt count, threads do not share one.
        return lambda *args, **kwargs: self._policy.copy()(value, *args, **kwargs)

    def __repr__(self) -> str:
        return f"with_retries({self._target!r})"


def with_retries(target: T, policy: Retrying) -> T:
    """A view of `target` whose every public method retries transient faults under `policy`.

    Methods call each other on the target itself, so a retried call never nests retries.
    """
    return _Retried(target, policy)  # type: ignore[return-value]
