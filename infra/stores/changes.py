"""Task changes as one Redis pub/sub subscription per process: waking long-polls, and keeping
the finished records this process read until they change."""
from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Callable

import redis

from maskflow.infra.stores.keys import task_channel

if TYPE_CHECKING:
    from maskflow.infra.stores.tasks import Task

log = logging.getLogger(__name__)

# A finished record is served from memory for at most this long: a record expiring in Redis
# (task.retention) announces nothing.
FINISHED_MAX_AGE_S = 5.0
FINISHED_MAX_ENTRIES = 10_000


class ChangeFeed:
    """One subscription per process to every task's change channel, fanned out to waiters.

    A subscription per waiter would cost each long-poll a connection and a round trip, and
    hand the next request a closed pooled connection to reopen.  While the feed is down
    (Redis restarting), waiters miss wake-ups and fall back to re-reading the record.
    Listeners (`listen`) hear every change's task id, and None when changes may have been
    missed: the subscription was lost, or made again.
    """

    def __init__(self, r: redis.Redis):
        self.r = r
        self.pattern = task_channel("*")
        self.prefix = len(self.pattern) - 1
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = {}
        self._listeners: list[Callable[[str | None], None]] = []
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._listen, name="task-changes", daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Unsubscribe within a second (the feed's read timeout); waiters fall back to re-reading."""
        self._closed.set()

    def listen(self, listener: Callable[[str | None], None]) -> None:
        self._listeners.append(listener)

    def watch(self, task_id: str) -> threading.Event:
        """An event set on the task's next change; hand it back with `unwatch`."""
        woken = threading.Event()
        with self._lock:
            self._waiters.setdefault(task_id, set()).add(woken)
        self.start()
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
        while not self._closed.is_set():
            pubsub = self.r.pubsub()
            try:
                pubsub.psubscribe(self.pattern)
                while not self._closed.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "pmessage":
                        self._changed(message["channel"].decode()[self.prefix:])
                    elif message["type"] == "psubscribe":  # every change from here on is heard
                        self._tell(None)
                        self.subscribed.set()
                        backoff = 0.1
            except redis.RedisError as exc:
                log.warning("task change feed down, waiters re-read every second: %s", exc)
            finally:
                self.subscribed.clear()
                self._tell(None)
                pubsub.close()
            self._closed.wait(backoff)  # before reconnecting to a Redis that just failed
            backoff = min(2 * backoff, 5.0)

    def _tell(self, task_id: str | None) -> None:
        for listener in self._listeners:
            listener(task_id)

    def _changed(self, task_id: str) -> None:
        self._tell(task_id)
        with self._lock:
            waiters = list(self._waiters.get(task_id, ()))
        for woken in waiters:
            woken.set()


class FinishedTasks:
    """The completed and failed records this process read, kept until the feed announces a change.

    A finished record changes when a new version of its object is claimed or awaits its model,
    or when its webhook's outcome is recorded: each of those scripts PUBLISHes on the task's
    channel (infra/stores/task_scripts.py), which drops the entry here.  Unfinished records are
    never kept: a client told "completed" by a webhook must not read "processing" after it.
    """

    def __init__(self, feed: ChangeFeed, read: Callable[[str], Task | None],
                 max_age: float = FINISHED_MAX_AGE_S, max_entries: int = FINISHED_MAX_ENTRIES):
        self.feed, self.read = feed, read
        self.max_age, self.max_entries = max_age, max_entries
        self._entries: dict[str, tuple[float, Task]] = {}
        self._changes = 0  # announcements so far: a read that overlapped one may be stale
        self._lock = threading.Lock()
        feed.listen(self._forget)

    def get(self, task_id: str) -> Task | None:
        self.feed.start()  # on the first lookup: kept records need the feed
        now = time.monotonic()
        entry = self._entries.get(task_id)
        if entry is not None and entry[0] > now and self.feed.subscribed.is_set():
            return entry[1]
        changes = self._changes
        task = self.read(task_id)
        if task is not None and task.terminal and self.feed.subscribed.is_set():
            with self._lock:
                if changes == self._changes:
                    if len(self._entries) >= self.max_entries:
                        del self._entries[next(iter(self._entries))]  # the oldest kept
                    self._entries[task_id] = (now + self.max_age, task)
        return task

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._entries

    def _forget(self, task_id: str | None) -> None:
        with self._lock:
            self._changes += 1
            if task_id is None:
                self._entries.clear()
            else:
                self._entries.pop(task_id, None)
