"""Task transitions against the real Redis: idempotent, versioned, never backwards."""
from __future__ import annotations

import pytest

from maskflow.infra.ops.processes import wait_until
from maskflow.infra.stores.keys import heartbeat_key, index_key, task_key
from maskflow.infra.stores.task_scripts import batch_prefixes
from maskflow.infra.stores.tasks import Decision, TaskStore, derive_task_id
from maskflow.infra.stores.workers import WorkerRegistry


@pytest.fixture
def task_store(servers, clean_redis):
    return TaskStore(clean_redis, servers.cfg)


def test_duplicate_event_after_completion_changes_nothing(task_store):
    tid = derive_task_id("b", "input/x/a.jpg")
    assert task_store.begin(tid, "input/x/a.jpg", "e1", "0A", "w1", "r1") == (Decision.START, 1)
    assert task_store.complete(tid, "0A", {"output": "output/x/a.jpg.png", "mask": "masks/x/a.jpg.png"})
    done = task_store.get(tid)
    assert task_store.begin(tid, "input/x/a.jpg", "e1", "0A", "w2", "r2")[0] is Decision.DUPLICATE
    assert task_store.get(tid) == done and done.status == "completed"


def test_older_event_is_stale_and_newer_version_restarts(task_store):
    tid = derive_task_id("b", "input/x/a.jpg")
    task_store.begin(tid, "input/x/a.jpg", "e2", "0B", "w1", "r1")
    assert task_store.begin(tid, "input/x/a.jpg", "e1", "0A", "w1", "r1")[0] is Decision.STALE
    task_store.complete(tid, "0B", {"output": "o", "mask": "m"})
    assert task_store.begin(tid, "input/x/a.jpg", "e3", "0C", "w1", "r1") == (Decision.START, 1)
    task = task_store.get(tid)
    assert task.status == "processing" and task.etag == "e3" and "output" not in task.results
    # finishing the old version is refused: only the version being processed may finish
    assert not task_store.complete(tid, "0B", {"output": "o", "mask": "m"})
    assert task_store.get(tid).status == "processing"


def test_busy_only_while_the_claiming_process_lives(servers, task_store, clean_redis):
    tid = derive_task_id("b", "input/k.jpg")
    WorkerRegistry(clean_redis, "w1", "run-1", servers.cfg.worker.lease).beat(ready="1")
    assert task_store.begin(tid, "input/k.jpg", "e", "01", "w1", "run-1")[0] is Decision.START
    assert task_store.begin(tid, "input/k.jpg", "e", "01", "w2", "other")[0] is Decision.BUSY
    # w1 restarted: same id, new run -> the old claim is orphaned and may be taken over
    WorkerRegistry(clean_redis, "w1", "run-2", servers.cfg.worker.lease).beat(ready="1")
    assert task_store.begin(tid, "input/k.jpg", "e", "01", "w2", "other") == (Decision.START, 2)
    clean_redis.delete(heartbeat_key("w1"))


def test_a_retried_claim_starts_again_and_another_claim_stays_busy(servers, task_store, clean_redis):
    # Redis can run a begin and lose its answer (stopping as it replies); the caller retries
    # with the same claim and must not find the task busy with its own claim.
    tid = derive_task_id("b", "input/lost.jpg")
    WorkerRegistry(clean_redis, "w1", "run-1", servers.cfg.worker.lease).beat(ready="1")
    args = (tid, "input/lost.jpg", "e", "01", "w1", "run-1")
    assert task_store.begin(*args, claim="c1") == (Decision.START, 1)
    assert task_store.begin(*args, claim="c1") == (Decision.START, 1)
    # another thread of the same process, same event twice: busy, not a second start
    assert task_store.begin(*args, claim="c2")[0] is Decision.BUSY
    assert task_store.begin(*args)[0] is Decision.BUSY
    assert task_store.get(tid).attempts == 1
    clean_redis.delete(heartbeat_key("w1"))


def test_attempts_exhausted_fail_the_task(servers, task_store):
    tid = derive_task_id("b", "input/poison.jpg")
    for attempt in range(1, servers.cfg.task.max_attempts + 1):
        assert task_store.begin(tid, "input/poison.jpg", "e", "01", f"w{attempt}", "r") == (Decision.START, attempt)
    decision, _ = task_store.begin(tid, "input/poison.jpg", "e", "01", "w9", "r")
    assert decision is Decision.EXHAUSTED
    assert task_store.get(tid).status == "failed" and "gave up" in task_store.get(tid).error


def test_batch_counters_follow_transitions(task_store):
    keys = [f"input/b1/sub/{i}.jpg" for i in range(4)]
    ids = [derive_task_id("b", k) for k in keys]
    for tid, key in zip(ids, keys):
        task_store.begin(tid, key, "e", "01", "w", "r")
    task_store.complete(ids[0], "01", {"output": "o", "mask": "m"})
    task_store.fail(ids[1], "01", "broken image")
    for prefix in batch_prefixes(keys[0]):
        summary = task_store.batch(prefix)
        assert summary.total == 4 and summary.done == 2
        assert summary.counts == {"pending": 0, "processing": 2, "completed": 1, "failed": 1}
        assert [(t.input_key, t.error) for t in summary.failures] == [(keys[1], "broken image")]
    # a re-upload of the failed key leaves the failure list
    task_store.begin(ids[1], keys[1], "e2", "02", "w", "r")
    assert task_store.batch("input/b1/").failures == []
    assert task_store.status_counts()["failed"] == 0


def test_overdue_processing_and_missing_uploads_fail(task_store):
    task_store.create_pending("announced", "input/announced.jpg", upload_deadline=1.0)
    tid = derive_task_id("b", "input/slow.jpg")
    task_store.begin(tid, "input/slow.jpg", "e", "01", "w", "r")
    expired = task_store.expire_overdue(now=10**12)
    assert set(expired) == {"announced", tid}
    assert task_store.get("announced").error == "upload not received"
    assert "timed out" in task_store.get(tid).error
    assert not task_store.complete(tid, "01", {"output": "o", "mask": "m"}), "a late finish must not revive a failed task"


def test_records_expire_after_retention(servers, task_store, clean_redis):
    tid = derive_task_id("b", "input/r.jpg")
    task_store.begin(tid, "input/r.jpg", "e", "01", "w", "r")
    ttl = clean_redis.ttl(task_key(tid))
    assert 0 < ttl <= servers.cfg.task.retention
    assert 0 < clean_redis.ttl(index_key("input/r.jpg")) <= servers.cfg.task.retention


def test_a_wrong_key_hint_costs_a_read_never_a_wrong_counter(task_store):
    # Transitions take the caller's idea of the task's key to save a read; when it is wrong,
    # the record's own key still decides which batch counters move.
    tid = derive_task_id("b", "input/right/a.jpg")
    assert task_store.begin(tid, "input/right/a.jpg", "e", "01", "w", "r")[0] is Decision.START
    assert task_store.complete(tid, "01", {"output": "o", "mask": "m"}, input_key="input/wrong/a.jpg")
    assert task_store.get(tid).status == "completed"
    assert task_store.batch("input/right/").counts["completed"] == 1
    assert task_store.batch("input/wrong/") is None


def test_begin_reads_the_record_when_its_key_is_not_the_events(task_store):
    # An API task announced for one key, claimed through an event naming another: the claim
    # moves the counters of the key the record was made for.
    task = task_store.create_pending("t-announced", "input/api/a.jpg")
    assert task.status == "pending" and task.input_key == "input/api/a.jpg" and task.created_at
    assert task_store.begin("t-announced", "input/elsewhere/a.jpg", "e", "01", "w", "r")[0] is Decision.START
    assert task_store.batch("input/api/").counts == {"pending": 0, "processing": 1, "completed": 0, "failed": 0}
    assert task_store.batch("input/elsewhere/") is None


def test_one_subscription_wakes_every_waiter_and_survives_losing_it(task_store, clean_redis):
    def feeds() -> int:
        # Connections subscribed to a pattern, one per started feed.  Not PUBSUB NUMPAT: it
        # counts unique patterns, so with another feed on this Redis (the session's task task_store)
        # it reads 1 before this feed is back.
        return sum(1 for client in clean_redis.client_list(_type="pubsub") if int(client["psub"]) > 0)

    others = feeds()
    waiters = [task_store.changes.watch(f"t{i}") for i in range(3)]
    for i in range(3):
        task_store.begin(f"t{i}", f"input/feed/{i}.jpg", "e", "01", "w", "r")
        assert waiters[i].wait(5), f"waiter {i} was not woken by its task's change"
    assert feeds() == others + 1  # one subscription, whatever the waiters
    # Redis drops the feed's connection (a restart, a failover): it subscribes again.
    clean_redis.client_kill_filter(_type="pubsub")
    wait_until(lambda: feeds() == others + 1, "every feed subscribed again", 10)
    again = task_store.changes.watch("t0")
    task_store.complete("t0", "01", {"output": "o", "mask": "m"})
    assert again.wait(5), "no wake-up after the feed came back"
    for i, woken in enumerate(waiters):
        task_store.changes.unwatch(f"t{i}", woken)
    task_store.changes.unwatch("t0", again)
    assert task_store.changes.waiting() == 0
