"""An API process keeps the finished records it read (changes.FinishedTasks), on the real Redis:
a second lookup costs no round trip, and every change of a finished record reaches it."""
from __future__ import annotations

import pytest

from checks import counting_commands
from maskflow.infra.ops.processes import wait_until
from maskflow.infra.stores.tasks import TaskStore, derive_task_id

KEY = "input/kept/a.jpg"
RESULTS = {"output": "output/kept/a.jpg.png", "mask": "masks/kept/a.jpg.png"}
# Long enough that a stale entry could only have gone because a change was heard.
FOREVER_S = 3600


@pytest.fixture
def store(servers, clean_redis):
    r = servers.redis()
    tasks = TaskStore(r, servers.cfg)
    tasks.sent = counting_commands(r)
    tasks.keep_finished(max_age=FOREVER_S)
    tasks.changes.start()  # as the first lookup does
    assert tasks.changes.subscribed.wait(10), "the change feed did not subscribe"
    yield tasks
    tasks.changes.close()


@pytest.fixture
def writer(servers, clean_redis):
    """Another process' view (a worker, the dispatcher): its changes reach `store` by Redis only."""
    return TaskStore(clean_redis, servers.cfg)


def finished(writer: TaskStore, sequencer: str = "0A") -> str:
    tid = derive_task_id("b", KEY)
    writer.begin(tid, KEY, "e", sequencer, "w", "r")
    assert writer.complete(tid, sequencer, RESULTS)
    return tid


def kept(store: TaskStore, tid: str) -> None:
    """Read until the record is kept: a read overlapping the announcement of its own
    completion keeps nothing."""
    wait_until(lambda: store.get(tid).terminal and tid in store.finished, "the record kept", 5)


def test_a_kept_record_costs_no_round_trip(store, writer):
    tid = finished(writer)
    kept(store, tid)
    store.sent.clear()
    first = store.get(tid)
    assert [store.get(tid) for _ in range(5)] == [first] * 5 and first.status == "completed"
    assert store.sent == []


def test_unfinished_records_are_read_every_time(store, writer):
    tid = derive_task_id("b", KEY)
    writer.begin(tid, KEY, "e", "0A", "w", "r")
    assert [store.get(tid).status for _ in range(3)] == ["processing"] * 3
    assert store.get("no-such-task") is None
    assert store.sent == ["HGETALL"] * 4


def test_a_new_version_replaces_the_kept_record(store, writer):
    tid = finished(writer)
    kept(store, tid)
    writer.begin(tid, KEY, "e2", "0B", "w", "r")  # a re-upload of the same key, claimed
    wait_until(lambda: store.get(tid).status == "processing", "the re-upload's claim seen", 5)
    assert writer.complete(tid, "0B", RESULTS)
    wait_until(lambda: store.get(tid).sequencer.endswith("0b"), "the new version's record seen", 5)


def test_waiting_for_a_model_replaces_the_kept_record(store, writer):
    tid = finished(writer)
    kept(store, tid)
    assert writer.await_model("b", KEY, "0B", "u2net")
    wait_until(lambda: store.get(tid).status == "pending", "the new version waiting seen", 5)


def test_a_webhook_outcome_replaces_the_kept_record(store, writer):
    tid = derive_task_id("b", KEY)
    writer.begin(tid, KEY, "e", "0A", "w", "r")
    writer.set_callback(tid, "https://hooks.example/done")
    assert writer.complete(tid, "0A", RESULTS)
    kept(store, tid)
    assert store.get(tid).callback is None
    assert writer.record_callback(tid, writer.get(tid).sequencer, "delivered", 1, "")
    wait_until(lambda: (store.get(tid).callback or {}).get("status") == "delivered",
               "the delivery seen", 5)


def test_losing_the_feed_forgets_every_kept_record(store, writer, clean_redis):
    # A change made while the feed is down is announced to no one: what was kept must go.
    tid = finished(writer)
    kept(store, tid)
    clean_redis.client_kill_filter(_type="pubsub")
    writer.begin(tid, KEY, "e2", "0B", "w", "r")
    wait_until(lambda: store.get(tid).status == "processing", "the change made while the feed was down", 5)
    assert store.changes.subscribed.wait(10), "the feed did not subscribe again"
    assert writer.complete(tid, "0B", RESULTS)
    wait_until(lambda: store.get(tid).status == "completed", "changes heard again", 5)
