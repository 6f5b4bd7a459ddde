"""Issue 9: poison never stalls the pipeline (real Redis, real MinIO, real workers)."""
from __future__ import annotations

import json
import threading

import pytest

from checks import PHOTOS
from functions.runtime import Worker
from infra.config import replace
from infra.objects import ObjectStore
from infra.queue import (DEAD_LETTER_KEY, EventQueue, dead_letter_count, heartbeat_key,
                         inflight_key, unwrap)
from infra.stack import wait_until
from infra.tasks import derive_task_id, index_key


def record(bucket: str, key, name="s3:ObjectCreated:Put", **obj) -> dict:
    return {"eventVersion": "2.0", "eventSource": "minio:s3", "eventName": name,
            "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 1000, "eTag": "0f0f",
                                                         "sequencer": "1879E5C8A1B2C3D4", **obj}}}


def message(rec: dict) -> bytes:
    return json.dumps([{"Event": [rec], "EventTime": "2026-11-28T00:00:00.000Z"}]).encode()


def dead_letters(r) -> list[dict]:
    return [json.loads(x) for x in r.lrange(DEAD_LETTER_KEY, 0, -1)]


def run_in_thread(worker: Worker, timeout: float) -> None:
    """Run a burst worker; fail (and stop it) if it is still consuming after `timeout` s."""
    thread = threading.Thread(target=worker.run, kwargs={"burst": True}, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        worker.stop()
        thread.join(30)
        pytest.fail(f"burst worker still busy after {timeout} s: a message is being retaken")


def test_message_failing_every_time_is_dead_lettered_after_max_deliveries(servers, clean_redis, store,
                                                                         model, tasks, unique_prefix):
    r = clean_redis
    cfg = replace(servers.cfg, worker={"max_deliveries": 3})
    key = f"input/{unique_prefix}/cursed.jpg"
    store.put(key, (PHOTOS / "rocket.jpg").read_bytes(), "image/jpeg")
    wait_until(lambda: r.llen(cfg.queue.events_key) == 1, "MinIO event", 10)
    original = r.lindex(cfg.queue.events_key, 0)
    # A real fault, not a mock: the key's task index holds a list, so every lookup of the
    # task fails with Redis' WRONGTYPE before any task exists.
    r.rpush(index_key(key), "not a task id")
    worker = Worker(cfg, "cursed", r, ObjectStore(cfg), lambda: model)
    run_in_thread(worker, timeout=60)

    (dead,) = dead_letters(r)
    assert dead["deliveries"] == 3 and dead["worker"] == "cursed"
    assert dead["reason"].startswith("gave up after 3 deliveries; last error: ResponseError: WRONGTYPE")
    assert dead["payload"] == original.decode(), "the dead letter keeps MinIO's message, not our header"
    assert r.llen(cfg.queue.events_key) == 0 and r.llen(inflight_key("cursed")) == 0
    assert tasks.get(derive_task_id(cfg.minio.bucket, key)) is None


@pytest.mark.parametrize("raw", [
    message(record("ai-segmentation", "input/ghost.jpg")),
    # not UTF-8, newlines, and a header we never wrote: the Lua script and Python must agree
    b"#maskflow-redelivery {}\n\xff\x00 not UTF-8, two\nlines",
], ids=["minio-message", "forged-header"])
def test_requeues_after_worker_deaths_count_deliveries(servers, clean_redis, model, raw):
    r = clean_redis
    cfg = replace(servers.cfg, worker={"max_deliveries": 3})
    reaper = EventQueue(r, cfg, "reaper")
    r.rpush(cfg.queue.events_key, raw)
    for attempt in range(1, cfg.worker.max_deliveries + 1):
        ghost = EventQueue(r, cfg, "ghost")
        ghost.heartbeat(ready="1")
        delivery = ghost.take(timeout=1)
        assert (delivery.message, delivery.attempt) == (raw, attempt)
        if attempt % 2:  # the ghost dies; a live worker's reaper requeues its message
            r.delete(heartbeat_key("ghost"))
            assert reaper.reap() == 1
            why = "worker ghost stopped heartbeating before settling it"
        else:  # the ghost dies and comes back under the same id
            assert EventQueue(r, cfg, "ghost").reclaim_own() == 1
            why = "worker ghost restarted before settling it"
        assert r.llen(inflight_key("ghost")) == 0 and r.llen(cfg.queue.events_key) == 1
        requeued = unwrap(r.lindex(cfg.queue.events_key, 0))
        assert (requeued.message, requeued.attempt, requeued.last_error) == (raw, attempt + 1, why)
    # taken once more, past max_deliveries: a dead letter, never processed again
    run_in_thread(Worker(cfg, "survivor", r, ObjectStore(cfg), lambda: model), timeout=60)
    (dead,) = dead_letters(r)
    assert dead["payload"] == raw.decode("utf-8", "replace") and dead["deliveries"] == 3
    assert dead["reason"] == "gave up after 3 deliveries; last error: worker ghost stopped heartbeating before settling it"
    assert r.llen(cfg.queue.events_key) == 0 and r.llen(inflight_key("survivor")) == 0


def test_dead_letters_are_capped_keeping_the_newest(servers, clean_redis, model):
    r = clean_redis
    cfg = replace(servers.cfg, queue={"dead_letter_max": 3}, worker={"concurrency": 1})
    r.rpush(cfg.queue.events_key, *[f"poison {i}".encode() for i in range(5)])
    run_in_thread(Worker(cfg, "capped", r, ObjectStore(cfg), lambda: model), timeout=60)
    assert dead_letter_count(r) == 3
    assert [d["payload"] for d in dead_letters(r)] == ["poison 2", "poison 3", "poison 4"]
    assert all(d["reason"].startswith("poison event: not JSON") for d in dead_letters(r))
