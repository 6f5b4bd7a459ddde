"""Serving the app with waitress, hardened against hostile clients (`python -m maskflow.api` calls `serve`).

Waitress measures `channel_timeout` as inactivity, so a client sending a byte every few
seconds keeps its connection forever, and its default `connection_limit` of 100 lets 100 such
clients stop the server from accepting anyone else. Here:

* `connection_limit` is `api.connection_limit` (1000 by default), polled with poll(2) because
  select(2) cannot watch file descriptors above 1023; the process' open-file limit is raised
  (or start-up refused) so that many connections can really be held;
* a channel that has not delivered a whole request within `api.request_timeout` seconds, plus
  one second per `api.min_request_rate` bytes it sent, is closed (like Apache's
  mod_reqtimeout). The clock starts at accept or at the first byte of a request and stops
  while a request is being served or the connection idles between requests (that idle time
  is `api.channel_timeout`). Both are checked once a second;
* waitress' own error answers (malformed request, body or headers too large) use the API's
  JSON error shape instead of plain text;
* a request that finds every thread busy is counted for /metrics (`QueueWatch`) instead of
  logged one by one.
"""
from __future__ import annotations

import json
import logging
import resource
import time

import waitress
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.task import ErrorTask

from maskflow.api.errors import body as error_body
from maskflow.api.errors import default_code
from maskflow.api.metrics import HttpMetrics
from maskflow.infra.wiring.config import Config, ConfigError

log = logging.getLogger("maskflow.api")

# Descriptors beyond the connections: listening socket, trigger pipe, Redis/MinIO pools, logs.
RESERVED_FDS = 256
# A connection may hold a second descriptor: a body over waitress' inbuf_overflow (512 KiB)
# spills to a temporary file.
FDS_PER_CONNECTION = 2


class JsonErrorTask(ErrorTask):
    """Waitress' answers to requests it refuses itself, in the API's error shape."""

    def execute(self) -> None:
        error = self.request.error
        status = error.code
        adj = self.channel.server.adj
        message = {
            413: f"the request body exceeds {adj.max_request_body_size - 1} bytes",
            431: f"the request headers exceed {adj.max_request_header_size - 1} bytes",
        }.get(status, f"{error.reason}: {error.body}")
        data = json.dumps(error_body(status, default_code(status), message)).encode()
        self.status = f"{status} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(data)
        self.write(data)


class GuardedChannel(HTTPChannel):
    """An HTTPChannel that keeps the clock of the request it is receiving, for
    `close_slow_requests`."""

    error_task_class = JsonErrorTask

    def __init__(self, *args, **kwargs):
        # The first request's clock starts at accept: a silent connection is a slow one.
        self.request_started: float | None = time.monotonic()
        self.request_bytes = 0
        super().__init__(*args, **kwargs)

    def received(self, data: bytes) -> bool:
        if self.request_started is None:
            self.request_started, self.request_bytes = time.monotonic(), 0
        self.request_bytes += len(data)
        result = super().received(data)
        if self.request is None:  # nothing half-received: the clock stops
            self.request_started = None
        return result


def close_slow_requests(server: BaseWSGIServer, request_timeout: float, min_request_rate: float) -> None:
    """Close the channels of `server` whose request arrives too slowly, from the maintenance
    waitress runs every `cleanup_interval` seconds in its event loop.  Checked there, not in
    each channel's readable(): the loop asks every channel that on each of its turns, and
    checking there cost 12-15 % of a bare route's requests per second at 16 connections
    (docs/benchmarks.md)."""
    waitress_maintenance = server.maintenance

    def maintenance(now: float) -> None:
        waitress_maintenance(now)  # channel_timeout: idle connections
        clock = time.monotonic()
        for channel in list(server.active_channels.values()):  # each a GuardedChannel
            started = channel.request_started
            if (started is not None and not channel.requests
                    and clock > started + request_timeout + channel.request_bytes / min_request_rate):
                channel.will_close = True  # the loop then closes it, as waitress' own timeout does

    server.maintenance = maintenance


class QueueWatch:
    """Takes the place of waitress' queue logger, which warns "Task queue depth is N" for every
    request that finds all threads busy: under load, a line per request (and 1.5 % of the
    API's time).  Counts them for /metrics instead, and logs at most one line a minute."""

    def __init__(self, metrics: HttpMetrics, log_every: float = 60.0):
        self.metrics = metrics
        self.log_every = log_every
        self._next_log = 0.0

    def warning(self, _message: str, depth: int) -> None:
        # Waitress calls this under its dispatcher's lock: one caller at a time.
        self.metrics.queued(depth)
        now = time.monotonic()
        if now >= self._next_log:
            self._next_log = now + self.log_every
            log.warning("requests are waiting for a free thread (%d queued now); "
                        "maskflow_http_requests_queued_total counts them", depth)


def ensure_fd_limit(connections: int) -> int:
    """Raise the soft open-file limit to what `connections` need; refuse if the hard one is lower."""
    need = connections * FDS_PER_CONNECTION + RESERVED_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        raise ConfigError(f"config key api.connection_limit={connections} needs about {need} open "
                          f"files but the hard limit (ulimit -Hn) is {hard}: lower "
                          f"api.connection_limit or raise the limit")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        soft = need
    return soft


def create_server(app, cfg: Config, max_body_bytes: int, metrics: HttpMetrics | None = None):
    """A waitress server for `app` with the settings above; `.run()` serves until stopped.
    `metrics` (the app's) counts the requests that waited for a thread.

    Call `ensure_fd_limit(cfg.api.connection_limit)` first.
    """
    api = cfg.api
    sockets: dict = {}
    server = waitress.create_server(
        app, map=sockets, host=api.host, port=api.port, threads=api.threads,
        connection_limit=api.connection_limit, channel_timeout=api.channel_timeout,
        asyncore_use_poll=True,
        # Waitress buffers a whole body before the app runs and refuses it past this size
        # (its check is ">="); the app applies each route's own, smaller limit.
        max_request_body_size=max_body_bytes + 1,
        # How often the slow-request check below runs (waitress' own default: 30 s).
        cleanup_interval=1,
        ident="maskflow")
    for dispatcher in sockets.values():  # one listening server per address
        if isinstance(dispatcher, BaseWSGIServer):
            dispatcher.channel_class = GuardedChannel
            close_slow_requests(dispatcher, api.request_timeout, api.min_request_rate)
    if metrics is not None:
        server.task_dispatcher.queue_logger = QueueWatch(metrics)
    return server
