"""infra/stores/changes.ChangeFeed when Redis refuses it for longer than the client's own retries."""
from __future__ import annotations

import queue

import redis

from maskflow.infra.stores.changes import ChangeFeed
from maskflow.infra.stores.keys import task_channel


class FlakyPubSub:
    """Refuses to subscribe while the server has refusals left; then delivers its messages."""

    def __init__(self, server: "FlakyRedis"):
        self.server = server

    def psubscribe(self, pattern: str) -> None:
        if self.server.refusals:
            self.server.refusals -= 1
            raise redis.ConnectionError("Connection refused")
        self.server.subscriptions += 1

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

    def pubsub(self, ignore_subscribe_messages: bool = True) -> FlakyPubSub:
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
