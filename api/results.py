"""GET /api/v1/results: the results stream, for clients that must not poll.

* JSON (the default): ``?after=<id>&prefix=input/b/&limit=N&wait=S`` answers the entries after
  `after` (default: only new ones), waiting up to `wait` seconds (XREAD BLOCK) for the first,
  and `next`, the id to ask after next time.
* Server-sent events (``Accept: text/event-stream``): one request that stays open; each entry
  is an ``event: result`` with its id (a client resumes with ``Last-Event-ID``), a comment
  line every HEARTBEAT_S keeps proxies from closing it, and it ends after MAX_STREAM_S.
  With `prefix`, events also carry the batch's counts, so a progress bar needs no other
  request, and an ``event: batch`` tells of counts that moved without a result (new uploads).

Counts never run ahead of the entries: a batch's counts and the stream's newest id are read
in one transaction, and counts go out only with the entries through that id.  So a client
that stops once ``done`` reaches its total has been sent every result first.  Within one read,
the earlier entries carry the counts sent before; on a replay (`after` older than the
newest entry), entries carry none until the stream has caught up.

An entry holds the task's id, input key and version, status, result keys, error, model,
options and timings; not its callback URL (which may carry the receiver's own token).
"""
from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator

import falcon

from maskflow.api.deps import Deps
from maskflow.api.errors import ApiError, bad_request
from maskflow.infra.stores import results
from maskflow.infra.stores.results import Entry

MAX_WAIT_S = 30
BLOCK_MS = 3000  # one XREAD BLOCK: under the API's Redis socket timeout (5 s)
HEARTBEAT_S = 15
MAX_STREAM_S = 3600
# Redis' stream ids are two 64-bit numbers: 19 digits always fit (13 are today's milliseconds)
_ID = re.compile(r"\d{1,19}(-\d{1,19})?|\$")
HIDDEN = ("callback_url",)


def shown(entry: Entry) -> dict:
    return {k: v for k, v in entry.as_json().items() if k not in HIDDEN}


class ResultsResource:
    def __init__(self, deps: Deps):
        self.deps = deps
        # A stream holds a waitress thread for its whole life: at most a quarter of them.
        self.streams = threading.BoundedSemaphore(max(1, deps.cfg.api.threads // 4))

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        given = falcon.uri.parse_query_string(req.query_string, keep_blank=True)
        prefix = given.get("prefix", "")
        if "prefix" in given and not (isinstance(prefix, str) and prefix.startswith("input/")):
            raise bad_request("prefix must be under input/, e.g. input/holiday/")
        after = req.get_header("Last-Event-ID") or given.get("after", "$")
        if not isinstance(after, str):
            raise bad_request("after must be given once")
        if not _ID.fullmatch(after):
            raise bad_request(f"after must be a stream id such as 1700000000000-0, got {after[:40]!r}")
        if "text/event-stream" in (req.accept or ""):
            self._stream(resp, after, prefix)
            return
        limit = int(_number(req, "limit", 100, 1, 1000))
        wait = _number(req, "wait", 0, 0, MAX_WAIT_S)
        entries, last, batch = self._read(after, prefix, limit, int(wait * 1000))
        resp.media = {"entries": [shown(e) for e in entries], "next": last,
                      **({"batch": batch} if batch else {})}

    def _read(self, after: str, prefix: str, limit: int, block_ms: int) -> tuple[list[Entry], str, dict | None]:
        """Entries after `after` under `prefix`; the id the reader got to (past filtered ones);
        and with a prefix, the batch's counts if the read got through every entry they count
        (None when it stopped at `limit` before that)."""
        deadline = time.monotonic() + block_ms / 1000
        while True:
            batch, newest = self._snapshot(prefix)
            if after == "$":  # "only new ones", as an id the answer can carry
                after = newest
            got = results.read_through(self.deps.redis, after, newest, limit)
            if got:
                after = got[-1].id
            caught_up = len(got) < limit or after == newest
            matching = [e for e in got if e.input_key.startswith(prefix)]
            left = int(1000 * (deadline - time.monotonic()))
            if matching or not caught_up or left <= 0:
                return matching, after, batch if caught_up else None
            results.wait_after(self.deps.redis, after, min(BLOCK_MS, left))

    def _snapshot(self, prefix: str) -> tuple[dict | None, str]:
        """The batch's counts (None without a prefix) and the newest stream id they account for."""
        if not prefix:
            return None, results.last_id(self.deps.redis)
        total, counts, newest = self.deps.tasks.batch_counts(prefix)
        done = counts.get("completed", 0) + counts.get("failed", 0)
        return {"prefix": prefix, "total": total, "done": done, "counts": counts}, newest

    def _stream(self, resp: falcon.Response, after: str, prefix: str) -> None:
        if not self.streams.acquire(blocking=False):
            raise ApiError(503, "too_many_streams", "too many result streams are open; retry shortly",
                           headers={"Retry-After": "5"})
        resp.content_type = "text/event-stream"
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("X-Accel-Buffering", "no")
        resp.stream = self._events(after, prefix)

    def _events(self, after: str, prefix: str) -> Iterator[bytes]:
        try:
            yield b": maskflow results\n\n"
            sent = None  # the counts last sent, which no entry still to come is counted in
            batch, newest = self._snapshot(prefix)
            if after == "$":
                after = newest
            if batch and _stream_order(after) >= _stream_order(newest):  # where the batch stands
                sent = batch
                yield _event("batch", batch)
            started = quiet_since = time.monotonic()
            while time.monotonic() - started < MAX_STREAM_S:
                entries, after, batch = self._read(after, prefix, 500, BLOCK_MS)
                for entry in entries:
                    counts = batch if entry is entries[-1] and batch else sent
                    yield _event("result", {**shown(entry), **({"batch": counts} if counts else {})}, entry.id)
                if batch:
                    if not entries and batch != sent:
                        yield _event("batch", batch)
                    sent = batch
                if entries:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= HEARTBEAT_S:
                    yield b": keep-alive\n\n"  # also how a closed connection is noticed
                    quiet_since = time.monotonic()
        finally:
            self.streams.release()


def _event(kind: str, data: dict, event_id: str = "") -> bytes:
    return (f"id: {event_id}\n" if event_id else "").encode() + f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def _stream_order(stream_id: str) -> tuple[int, int]:
    """A stream id as Redis orders it ("<ms>" reads as "<ms>-0")."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _number(req: falcon.Request, name: str, default: float, lo: float, hi: float) -> float:
    raw = req.get_param(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise bad_request(f"query parameter {name} must be a number, got {raw[:40]!r}") from None
    if not lo <= value <= hi:  # also refuses nan
        raise bad_request(f"query parameter {name} must be between {lo:g} and {hi:g}, got {value:g}")
    return value
