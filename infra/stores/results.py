"""The results stream (``maskflow:results``): one entry per terminal transition of a task,
appended by the transition's own script (infra/stores/task_scripts.py), read here.  The same
script copies the entry of a task with a callback_url to the webhooks stream.

Readers: the API's ``GET /api/v1/results`` (XREAD, from an id) and anyone's own consumer group
(docs/results.md) read the results stream; the webhook dispatcher reads the webhooks stream
(a consumer group, XREADGROUP / XACK, and XAUTOCLAIM for the entries of a consumer that died),
so a task without a callback costs it nothing.  The dispatcher's schedule of attempts, their
counts and its outcome counters live beside the stream (keys.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import redis

from maskflow.infra.stores.keys import RESULTS_STREAM, WEBHOOK_ATTEMPTS, WEBHOOK_STATS, WEBHOOKS_DUE


@dataclass(frozen=True)
class Entry:
    id: str                # the stream entry id, "<ms>-<seq>": unique per terminal transition
    fields: dict[str, str]

    @property
    def task_id(self) -> str:
        return self.fields.get("task_id", "")

    @property
    def status(self) -> str:
        return self.fields.get("status", "")

    @property
    def input_key(self) -> str:
        return self.fields.get("input_key", "")

    @property
    def written_at(self) -> float:
        """When the transition happened (Unix time): the entry id's milliseconds."""
        return int(self.id.split("-", 1)[0]) / 1000

    def as_json(self) -> dict:
        """The entry as the API and `maskflow watch --json` show it."""
        out: dict = {"id": self.id, **self.fields}
        if "options" in out:
            out["options"] = json.loads(out["options"])
        if "attempts" in out:
            out["attempts"] = int(out["attempts"])
        return out


def _entries(raw) -> list[Entry]:
    return [Entry(entry_id.decode(), {k.decode(): v.decode() for k, v in fields.items()})
            for entry_id, fields in raw if fields is not None]


def read_through(r: redis.Redis, after: str, last: str, count: int) -> list[Entry]:
    """At most `count` entries after `after` ("0": from the oldest kept), up to and including
    `last` ("+": the newest)."""
    return _entries(r.xrange(RESULTS_STREAM, min=f"({after}", max=last, count=count))


def wait_after(r: redis.Redis, after: str, block_ms: int) -> None:
    """Return once an entry after `after` exists, or after `block_ms`."""
    r.xread({RESULTS_STREAM: after}, count=1, block=block_ms)


def last_id(r: redis.Redis) -> str:
    """The newest entry's id, "0-0" for an empty stream: where to start following."""
    newest = r.xrevrange(RESULTS_STREAM, count=1)
    return newest[0][0].decode() if newest else "0-0"


def length(r: redis.Redis) -> int:
    return r.xlen(RESULTS_STREAM)


class Group:
    """One consumer of a consumer group on a stream (the results stream unless told): each entry
    goes to one consumer of the group; an entry stays pending (XPENDING) until acknowledged, and
    the entries of a consumer that died are claimed by another after `min_idle_ms`."""

    def __init__(self, r: redis.Redis, group: str, consumer: str, start: str = "0", stream: str = RESULTS_STREAM):
        self.r, self.group, self.consumer, self.stream = r, group, consumer, stream
        try:
            self.r.xgroup_create(stream, group, id=start, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, count: int, block_ms: int | None = None) -> list[Entry]:
        answer = self.r.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms)
        return _entries(answer[0][1]) if answer else []

    def reclaim(self, min_idle_ms: int, count: int) -> list[Entry]:
        """Entries pending with any consumer for at least `min_idle_ms`, now this one's."""
        _next, claimed, *_deleted = self.r.xautoclaim(self.stream, self.group, self.consumer,
                                                      min_idle_ms, "0-0", count=count)
        return _entries(claimed)

    def ack(self, *ids: str) -> None:
        if ids:
            self.r.xack(self.stream, self.group, *ids)


class Schedule:
    """When each entry's next webhook attempt is due (a sorted set, so a waiting retry holds no
    thread), and how many attempts it has had.  Whoever removes an entry from the set owns
    that attempt; one it never finishes stays pending in the group and is claimed again."""

    def __init__(self, r: redis.Redis):
        self.r = r

    def add(self, entry_id: str, when: float, keep: bool = False) -> None:
        """`keep`: leave an entry's existing time alone (a reclaimed entry already scheduled)."""
        self.r.zadd(WEBHOOKS_DUE, {entry_id: when}, nx=keep)

    def first(self) -> tuple[str, float] | None:
        """The entry due first, and when; None when nothing is scheduled."""
        first = self.r.zrange(WEBHOOKS_DUE, 0, 0, withscores=True)
        return (first[0][0].decode(), first[0][1]) if first else None

    def own(self, entry_id: str) -> bool:
        """Take the entry off the schedule: True if this caller did (it owns that attempt)."""
        return bool(self.r.zrem(WEBHOOKS_DUE, entry_id))

    def attempt(self, entry_id: str) -> int:
        """Count one more attempt; the number of this one."""
        return int(self.r.hincrby(WEBHOOK_ATTEMPTS, entry_id, 1))

    def forget(self, entry_id: str) -> None:
        self.r.hdel(WEBHOOK_ATTEMPTS, entry_id)
        self.r.zrem(WEBHOOKS_DUE, entry_id)


LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


def count_delivery(r: redis.Redis, outcome: str, latency: float | None = None) -> None:
    """One delivery attempt's outcome for /metrics; `latency`, for a delivered one: seconds
    from the task's transition to the receiver's answer."""
    pipe = r.pipeline(transaction=False)
    pipe.hincrby(WEBHOOK_STATS, f"outcome:{outcome}", 1)
    if latency is not None:
        pipe.hincrbyfloat(WEBHOOK_STATS, "latency_sum", latency)
        pipe.hincrby(WEBHOOK_STATS, "latency_count", 1)
        for bound in LATENCY_BUCKETS:
            if latency <= bound:
                pipe.hincrby(WEBHOOK_STATS, f"latency_bucket:{bound}", 1)
    pipe.execute()


def delivery_stats(r: redis.Redis) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in r.hgetall(WEBHOOK_STATS).items()}
