"""The event queue MinIO writes to, and the bookkeeping that makes consumption at-least-once.

Pattern: reliable queue with per-worker in-flight lists (Redis' documented RPOPLPUSH/LMOVE
pattern, as rq and kombu use it).  MinIO RPUSHes to `queue.events_key` and checks that the key
is a plain list, so the queue must stay one; a Stream would need a second hop.  A worker
atomically moves an event into ``maskflow:inflight:<worker>`` (LMOVE), and removes it only
after the task state is settled.  Each worker refreshes a heartbeat hash with a TTL; a reaper,
run by every live worker, moves the in-flight events of workers whose heartbeat expired back
onto the events list, so an event taken by a worker that is SIGKILLed or loses power is
processed again by another one.  Redelivery means duplicates are possible: task transitions
are idempotent (see infra/tasks.py).

Every Redis key name for events, in-flight work, workers and dead letters lives here.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

import redis

from infra.config import Config

PREFIX = "maskflow"
WORKERS_KEY = f"{PREFIX}:workers"
DEAD_LETTER_KEY = f"{PREFIX}:dead"


def inflight_key(worker_id: str) -> str:
    return f"{PREFIX}:inflight:{worker_id}"


def heartbeat_key(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"


def worker_status(r: redis.Redis, worker_id: str) -> dict[str, str]:
    raw = r.hgetall(heartbeat_key(worker_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    payload: str
    worker: str
    at: float


class EventQueue:
    def __init__(self, r: redis.Redis, cfg: Config, worker_id: str):
        self.r = r
        # Tells this process from an earlier run of the same worker id (see TaskStore.begin).
        self.run_id = uuid.uuid4().hex[:12]
        self.events_key = cfg.queue.events_key
        self.worker_id = worker_id
        self.inflight = inflight_key(worker_id)
        self.lease = cfg.worker.lease

    # -- consuming ---------------------------------------------------------------------------
    def take(self, timeout: float) -> bytes | None:
        """Block up to `timeout` s for the next event; it stays in our in-flight list until acked."""
        return self.r.blmove(self.events_key, self.inflight, timeout, "LEFT", "RIGHT")

    def ack(self, raw: bytes) -> None:
        self.r.lrem(self.inflight, 1, raw)

    def give_back(self, raw: bytes) -> None:
        """Return an event we could not finish (shutdown) to the head of the queue."""
        with self.r.pipeline(transaction=True) as p:
            p.lpush(self.events_key, raw)
            p.lrem(self.inflight, 1, raw)
            p.execute()

    def dead_letter(self, raw: bytes, reason: str) -> None:
        record = json.dumps({"reason": reason, "payload": raw.decode("utf-8", "replace"),
                             "worker": self.worker_id, "at": time.time()})
        with self.r.pipeline(transaction=True) as p:
            p.rpush(DEAD_LETTER_KEY, record)
            p.lrem(self.inflight, 1, raw)
            p.execute()

    # -- liveness ----------------------------------------------------------------------------
    def heartbeat(self, **fields: str | int | float) -> None:
        key = heartbeat_key(self.worker_id)
        with self.r.pipeline(transaction=True) as p:
            p.sadd(WORKERS_KEY, self.worker_id)
            p.hset(key, mapping={"updated": time.time(), "run": self.run_id,
                                 **{k: str(v) for k, v in fields.items()}})
            p.expire(key, self.lease)
            p.execute()

    def retire(self) -> None:
        """Clean exit: nothing left in flight, so forget this worker."""
        with self.r.pipeline(transaction=True) as p:
            p.delete(heartbeat_key(self.worker_id))
            p.srem(WORKERS_KEY, self.worker_id)
            p.execute()

    def reclaim_own(self) -> int:
        """At start-up: events left in our in-flight list belong to a dead previous incarnation."""
        return self._requeue_all(self.worker_id)

    def reap(self) -> int:
        """Requeue the in-flight events of every worker whose heartbeat has expired."""
        moved = 0
        for member in self.r.smembers(WORKERS_KEY):
            worker = member.decode()
            if worker == self.worker_id or self.r.exists(heartbeat_key(worker)):
                continue
            moved += self._requeue_all(worker)
            self.r.srem(WORKERS_KEY, worker)
        return moved

    def _requeue_all(self, worker: str) -> int:
        moved = 0
        # LMOVE is atomic per event: a crash here leaves each event in exactly one list.
        while self.r.lmove(inflight_key(worker), self.events_key, "RIGHT", "LEFT") is not None:
            moved += 1
        return moved

    # -- introspection -----------------------------------------------------------------------
    def depth(self) -> int:
        return self.r.llen(self.events_key)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return [DeadLetter(**json.loads(x)) for x in self.r.lrange(DEAD_LETTER_KEY, 0, limit - 1)]
