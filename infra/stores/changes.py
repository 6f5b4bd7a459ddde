"""Waking long-polls when a task changes: one Redis pub/sub subscription per process."""
from __future__ import annotations

import logging
import threading
import time

import redis

from maskflow.infra.stores.keys import task_channel

log = logging.getLogger(__name__)


class ChangeFeed:
    """One subscription per process to every task's change channel, fanned out to waiters.

    A subscription per waiter would cost each long-poll a connection and a round trip, and
    hand the next request a closed pooled connection to reopen.  While the feed is down
    (Redis restarting), waiters miss wake-ups and fall back to re-reading the record.
    """

    def __init__(self, r: redis.Redis):
        self.r = r
        self.pattern = task_channel("*")
        self.prefix = len(self.pattern) - 1
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = {}
        self._thread: threading.Thread | None = None

    def watch(self, task_id: str) -> threading.Event:
        """An event set on the task's next change; hand it back with `unwatch`."""
        woken = threading.Event()
        with self._lock:
            self._waiters.setdefault(task_id, set()).add(woken)
            if self._thread is None:
                self._thread = threading.Thread(target=self._listen, name="task-changes", daemon=True)
                self._thread.start()
        self.subscribed.wait(1.0)  # only the first waiter, or one during an outage, waits here
        return woken

    def waiting(self) -> int:
        """Waiters right now: this process' long-polls."""
        with self._lock:
            return sum(len(waiters) for waiters in self._waiters.values())

    def unwatch(self, task_id: str, woken: threading.Event) -> None:
        with self._lock:
            waiters = self._waiters.get(task_id)
            if waiters is not None:
                waiters.discard(woken)
                if not waiters:
                    del self._waiters[task_id]

    def _listen(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self.r.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.psubscribe(self.pattern)
                pubsub.get_message(timeout=1.0)  # the confirmation: subscribed from here on
                self.subscribed.set()
                backoff = 0.1
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._wake(message["channel"].decode()[self.prefix:])
            except redis.RedisError as exc:
                log.warning("task change feed down, waiters re-read every second: %s", exc)
            finally:
                self.subscribed.clear()
                pubsub.close()
            time.sleep(backoff)  # before reconnecting to a Redis that just failed
            backoff = min(2 * backoff, 5.0)

    def _wake(self, task_id: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(task_id, ()))
        for woken in waiters:
            woken.set()
