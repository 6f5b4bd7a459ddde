"""Which workers are alive: each one's heartbeat hash with a TTL, and the set of every worker id
that has ever beaten and not yet been forgotten.

A worker beats (functions/liveness.py); the API's /metrics, the stack's readiness probe, the
K8s probe and TaskStore.begin read the beats; a worker whose beat has expired is dead, and a
live worker's reaper requeues what it held and forgets it.  Field names: keys.Heartbeat.
"""
from __future__ import annotations

import time

import redis

from maskflow.infra.stores.keys import WORKERS_KEY, Heartbeat, heartbeat_key


def worker_status(r: redis.Redis, worker_id: str) -> dict[str, str]:
    raw = r.hgetall(heartbeat_key(worker_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


def served_models(r: redis.Redis) -> dict[str, int]:
    """How many ready workers serve each model right now, by their live heartbeats."""
    served: dict[str, int] = {}
    for member in r.smembers(WORKERS_KEY):
        beat = worker_status(r, member.decode())
        if beat.get(Heartbeat.READY) == "1":
            for model in filter(None, beat.get(Heartbeat.MODELS, "").split(",")):
                served[model] = served.get(model, 0) + 1
    return served


class WorkerRegistry:
    def __init__(self, r: redis.Redis, worker_id: str, run_id: str, lease: int):
        self.r = r
        self.worker_id = worker_id
        self.run_id = run_id
        self.lease = lease

    def beat(self, **fields: str | int | float) -> None:
        """Refresh our heartbeat for another `lease` seconds, with these fields."""
        key = heartbeat_key(self.worker_id)
        with self.r.pipeline(transaction=True) as p:
            p.sadd(WORKERS_KEY, self.worker_id)
            p.hset(key, mapping={Heartbeat.UPDATED: time.time(), Heartbeat.RUN: self.run_id,
                                 **{k: str(v) for k, v in fields.items()}})
            p.expire(key, self.lease)
            p.execute()

    def retire(self) -> None:
        """Clean exit: nothing left in flight, so forget this worker."""
        with self.r.pipeline(transaction=True) as p:
            p.delete(heartbeat_key(self.worker_id))
            p.srem(WORKERS_KEY, self.worker_id)
            p.execute()

    def dead(self) -> list[str]:
        """Other workers whose heartbeat has expired."""
        return [w for w in (m.decode() for m in self.r.smembers(WORKERS_KEY))
                if w != self.worker_id and not self.r.exists(heartbeat_key(w))]

    def forget(self, worker_id: str) -> None:
        self.r.srem(WORKERS_KEY, worker_id)
