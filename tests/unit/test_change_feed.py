"""infra/stores/changes: ChangeFeed when Redis refuses it for longer than the client's own retries,
and FinishedTasks when announcements race its reads."""
from __future__ import annotations

import queue
import threading

import redis

from maskflow.infra.stores.changes import ChangeFeed, FinishedTasks
from maskflow.infra.stores.keys import task_channel
from maskflow.infra.stores.tasks import Task


class FlakyPubSub:
    """Refuses to subscribe while the server has refusals left; then delivers its messages."""

    def __init__(self, server: "FlakyRedis"):
        self.server = server

    def psubscribe(self, pattern: str) -> None:
        if self.server.refusals:
            self.server.refusals -= 1
            raise redis.ConnectionError("Connection refused")
        self.server.subscriptions += 1
        self.server.messages.put({"type": "psubscribe", "channel": pattern.encode(), "data": 1})

    def get_message(self, timeout: float):
        try:
            return self.server.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        pass


class FlakyRedis:
    def __init__(self, refusals: int):
        self.refusals, self.subscriptions = refusals, 0
        self.messages: queue.Queue = queue.Queue()

    def pubsub(self) -> FlakyPubSub:
        return FlakyPubSub(self)


def test_the_feed_subscribes_again_after_redis_refused_it():
    server = FlakyRedis(refusals=3)
    feed = ChangeFeed(server)
    woken = feed.watch("t1")  # starts the feed, which is refused three times, backing off
    assert feed.subscribed.wait(10) and server.subscriptions == 1
    server.messages.put({"type": "pmessage", "channel": task_channel("t1").encode(), "data": b"completed"})
    assert woken.wait(5)
    other = feed.watch("t2")
    assert not other.is_set() and feed.waiting() == 2


class AnnouncingFeed:
    """What FinishedTasks needs of a ChangeFeed: its state and its announcements, told by the test."""

    def __init__(self) -> None:
        self.subscribed = threading.Event()
        self.subscribed.set()
        self.listeners: list = []

    def listen(self, listener) -> None:
        self.listeners.append(listener)

    def start(self) -> None:
        pass

    def announce(self, task_id: str | None) -> None:
        for listener in self.listeners:
            listener(task_id)


class Records:
    """The records in "Redis", counting reads; `during_read` runs inside a read."""

    def __init__(self, **statuses: str) -> None:
        self.statuses, self.reads, self.during_read = statuses, 0, None

    def read(self, task_id: str) -> Task | None:
        self.reads += 1
        status = self.statuses.get(task_id)
        if self.during_read:
            self.during_read()
        return Task(task_id, status, f"input/{task_id}.jpg", "2026-12-07T00:00:00Z") if status else None


def test_a_change_announced_during_the_read_keeps_nothing():
    feed, records = AnnouncingFeed(), Records(t1="completed")
    finished = FinishedTasks(feed, records.read)
    # The record is re-uploaded while our read of the old one is on its way back.
    records.during_read = lambda: feed.announce("t1")
    assert finished.get("t1").status == "completed" and len(finished) == 0
    records.during_read = None
    finished.get("t1"), finished.get("t1")
    assert records.reads == 2 and len(finished) == 1


def test_nothing_is_kept_or_served_while_the_feed_is_down():
    feed, records = AnnouncingFeed(), Records(t1="completed")
    finished = FinishedTasks(feed, records.read)
    finished.get("t1")
    feed.subscribed.clear()
    feed.announce(None)  # what the feed says when it loses its subscription
    finished.get("t1"), finished.get("t1")
    assert records.reads == 3 and len(finished) == 0


def test_entries_age_out_and_the_oldest_goes_first():
    feed, records = AnnouncingFeed(), Records(a="failed", b="completed", c="completed")
    aged = FinishedTasks(feed, records.read, max_age=0)
    aged.get("a"), aged.get("a")
    assert records.reads == 2
    records.reads = 0
    small = FinishedTasks(feed, records.read, max_entries=2)
    for task_id in ("a", "b", "c", "b", "c", "a"):
        small.get(task_id)
    assert records.reads == 4  # a, b, c, then a again: it was dropped for c
