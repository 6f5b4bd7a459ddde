"""Keeping a worker's claims honest: heartbeat, lease, reaper, reclaim of own and unheld events.

One maintenance thread per worker process, every `worker.heartbeat` seconds:

* beat: refresh the heartbeat hash for another `worker.lease` seconds, with the counters the
  API's /metrics reads and whether the worker is ready (infra/stores/workers.py);
* requeue unheld: an event in our in-flight list that no consumer holds at two beats in a row.
  Redis can move an event there and stop before its answer reaches us; the consumer retries
  and takes the next one, and the event would wait, unseen, until this worker restarts (a CI
  run's outage test lost one that way).  Two beats keep a claim whose answer is still on its
  way from looking orphaned;
* reap: the in-flight events of every worker whose heartbeat expired go back to the queue,
  each counted as a delivery, and the dead worker is forgotten;
* expire: tasks processing past `task.timeout`, and announced uploads that never came, fail.

At start-up, before consuming, events left in our in-flight list by a previous run of the same
worker id are requeued.  The beats go on after a SIGTERM while consumers finish in-flight
events: a silent worker would have them requeued by others and run twice.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import redis

from maskflow.infra.stores.keys import Heartbeat
from maskflow.infra.stores.source import Leases
from maskflow.infra.stores.tasks import TaskStore
from maskflow.infra.stores.workers import WorkerRegistry

log = logging.getLogger("maskflow.worker")

HISTOGRAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


@dataclass
class Stats:
    """What the steps count: tasks finished and their durations (liveness publishes them)."""
    processed: int = 0
    failed: int = 0
    seconds_sum: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * len(HISTOGRAM_BUCKETS))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, seconds: float, ok: bool) -> None:
        with self.lock:
            if ok:
                self.processed += 1
            else:
                self.failed += 1
            self.seconds_sum += seconds
            for i, bound in enumerate(HISTOGRAM_BUCKETS):
                if seconds <= bound:
                    self.buckets[i] += 1


class Liveness:
    """The maintenance of one worker process; `held` names what its consumers work on now."""

    def __init__(self, registry: WorkerRegistry, leases: Leases, tasks: TaskStore, stats: Stats,
                 held: Callable[[], Counter[Hashable]], interval: float):
        self.registry = registry
        self.leases = leases
        self.tasks = tasks
        self.stats = stats
        self.held = held
        self.interval = interval
        self.ready = False
        self.not_ready_reason = ""
        self.models: tuple[str, ...] = ()  # served, once loaded
        self._unheld_before: set[Hashable] = set()  # in our in-flight list, held by nobody, last beat

    def reclaim_own(self) -> int:
        """At start-up: what our in-flight list holds belongs to a dead previous run of us."""
        worker = self.registry.worker_id
        moved = self.leases.reclaim(worker, f"worker {worker} restarted before settling it")
        if moved:
            log.warning("requeued %d events left in flight by a previous run of %s", moved, worker)
        return moved

    def maintain(self, until: threading.Event) -> None:
        """Beat, requeue, reap and expire every `interval` seconds until `until` is set."""
        while not until.is_set():
            try:
                self.beat()
                if self.ready:
                    self.requeue_unheld()
                    self.reap()
                    for task_id in self.tasks.expire_overdue():
                        log.warning("task %s expired", task_id)
            except redis.RedisError as exc:
                log.warning("maintenance: Redis unavailable: %s", exc)
            until.wait(self.interval)

    def beat(self) -> None:
        self.registry.beat(**{Heartbeat.READY: "1" if self.ready else "0",
                              Heartbeat.REASON: self.not_ready_reason, Heartbeat.PID: os.getpid(),
                              Heartbeat.HOST: socket.gethostname(), Heartbeat.BUSY: sum(self.held().values()),
                              Heartbeat.MODELS: ",".join(self.models)},
                           **counters(self.stats))

    def requeue_unheld(self) -> None:
        """Requeue what sits in our in-flight list unheld at two beats in a row."""
        held = self.held()
        listed = {delivery.receipt: delivery for delivery in self.leases.in_flight()}
        unheld = {receipt for receipt in listed if receipt not in held}
        for receipt in unheld & self._unheld_before:
            self.leases.give_back(listed[receipt], "claimed, but Redis lost the answer to the claim")
            log.warning("requeued an event in our in-flight list that no consumer held")
        self._unheld_before = unheld - self._unheld_before

    def reap(self) -> int:
        """Requeue what dead workers held, and forget them; returns how many events moved."""
        moved = 0
        for worker in self.registry.dead():
            moved += self.leases.reclaim(worker, f"worker {worker} stopped heartbeating before settling it")
            self.registry.forget(worker)
        if moved:
            log.warning("requeued %d events of dead workers", moved)
        return moved


def counters(stats: Stats) -> dict[str, str]:
    """Heartbeat fields: the counters and a Prometheus-style cumulative histogram (the API's
    /metrics reads them from Redis)."""
    with stats.lock:
        count, seconds = str(stats.processed + stats.failed), f"{stats.seconds_sum:.3f}"
        out = {Heartbeat.PROCESSED: str(stats.processed), Heartbeat.FAILED: str(stats.failed),
               Heartbeat.DURATION_SUM: seconds,
               Heartbeat.DURATION_COUNT: count, f"{Heartbeat.DURATION_BUCKET}+Inf": count}
        out.update({f"{Heartbeat.DURATION_BUCKET}{b}": str(n)
                    for b, n in zip(HISTOGRAM_BUCKETS, stats.buckets)})
        return out
