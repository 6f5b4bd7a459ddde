"""Issue 9: poison never stalls the pipeline (real Redis, real MinIO, real worker processes)."""
from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter

import pytest

from checks import PHOTOS, check_result, start_worker, stop_worker, wait_for_task
from maskflow.functions.liveness import Liveness, Stats
from maskflow.functions.worker import Worker, build_worker
from maskflow.infra.domain.catalog import PERSON
from maskflow.infra.ops.processes import wait_until
from maskflow.infra.stores.keys import DEAD_LETTER_KEY, heartbeat_key, index_key, inflight_key
from maskflow.infra.stores.queue import DEAD_PAYLOAD_BYTES, RedisListSource, dead_letter_count, unwrap
from maskflow.infra.stores.tasks import TaskStore, derive_task_id
from maskflow.infra.stores.workers import WorkerRegistry, worker_status
from maskflow.infra.wiring.config import replace


def record(bucket: str, key, name="s3:ObjectCreated:Put", **obj) -> dict:
    return {"eventVersion": "2.0", "eventSource": "minio:s3", "eventName": name,
            "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 1000, "eTag": "0f0f",
                                                         "sequencer": "1879E5C8A1B2C3D4", **obj}}}


def message(rec: dict) -> bytes:
    return json.dumps([{"Event": [rec], "EventTime": "2026-11-28T00:00:00.000Z"}]).encode()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (/proc/<pid>/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def poison_corpus(bucket: str, unique_prefix: str) -> dict[bytes, str]:
    """Poison messages -> what each one's dead letter's reason must say."""
    p = f"input/{unique_prefix}"
    key_number = record(bucket, f"{p}/k.jpg")
    key_number["s3"]["object"]["key"] = 12345
    name_not_text = record(bucket, f"{p}/n.jpg")
    name_not_text["eventName"] = {"s3:ObjectCreated:Put": True}
    return {
        message(record(bucket, f"{p}/abc.jpg", size="abc")): 'size: expected a non-negative integer, got "abc"',
        message(key_number): "key: expected a string, got 12345",
        message(name_not_text): "eventName: expected a string, got an object",
        b"null": "expected a list of {Event: [...]} entries, got null",
        b"[]": "got an empty list",
        b"7" * 2_000_000: "message of 2000000 bytes exceeds the limit of 65536 bytes",
        message(record(bucket, f"{p}/seq.jpg", sequencer=None)): "sequencer: expected 1 to 32 hex digits, got null",
        message(record("someone-elses-bucket", f"{p}/b.jpg")): "event for bucket 'someone-elses-bucket'",
        message(record(bucket, f"output/{unique_prefix}/o.jpg")): "key outside input/",
        message(record(bucket, f"{p}/../../output/x.jpg")): "key outside input/",
        b"\xff\xfe\x00 not JSON \x80": "not JSON",
    }


def test_poison_corpus_never_stalls_the_pipeline(servers, clean_redis, objects, person_model, tasks,
                                                  unique_prefix, tmp_path):
    r, cfg = clean_redis, replace(servers.cfg, worker={"concurrency": 2})
    bucket, p = cfg.minio.bucket, f"input/{unique_prefix}"
    poison = poison_corpus(bucket, unique_prefix)
    # never uploaded: reading it would fail with NoSuchKey, so the error shows it was never read
    huge_key = f"{p}/huge.jpg"
    huge = message(record(bucket, huge_key, size=cfg.task.max_upload_bytes + 1))
    r.rpush(cfg.queue.events_key, *poison, huge)

    log = tmp_path / "worker.log"
    with open(log, "ab") as stderr:
        worker = start_worker(cfg, "poison-eater", stderr=stderr)
    try:
        wait_until(lambda: worker_status(r, "poison-eater").get("ready") == "1", "worker", 60, worker, log)
        good_key = f"{p}/good.jpg"
        data = (PHOTOS / "coffee.jpg").read_bytes()
        uploaded = time.monotonic()
        objects.put(good_key, data, "image/jpeg")
        task = wait_for_task(tasks, derive_task_id(bucket, good_key), timeout=20)
        print(f"\ngood upload behind {len(poison) + 1} poison messages: {task.status} "
              f"after {time.monotonic() - uploaded:.2f} s")
        assert task is not None and task.status == "completed", (task, log.read_text()[-3000:])
        check_result(servers, objects, person_model, good_key, data, tasks)

        wait_until(lambda: r.llen(cfg.queue.events_key) == 0 and r.llen(inflight_key("poison-eater")) == 0,
                   "events drained", 20)
        expected = {raw[:DEAD_PAYLOAD_BYTES].decode("utf-8", "replace"): why for raw, why in poison.items()}
        wait_until(lambda: expected.keys() <= {d["payload"] for d in dead_letters(r)}, "every poison dead-lettered", 20)
        by_payload = {d["payload"]: d for d in dead_letters(r)}
        for payload, why in expected.items():
            dead = by_payload[payload]
            assert why in dead["reason"], (why, dead["reason"])
            assert dead["worker"] == "poison-eater" and dead["deliveries"] == 1 and dead["at"] > 0
        big = by_payload["7" * DEAD_PAYLOAD_BYTES]
        assert big["truncated"] and big["size"] == 2_000_000
        assert not any(d["truncated"] for d in by_payload.values() if d is not big)
        assert huge.decode() not in by_payload, "an oversized upload is a failed task, not a dead letter"
        failed = wait_for_task(tasks, derive_task_id(bucket, huge_key), timeout=10)
        assert failed.status == "failed"
        assert failed.error == (f"object of {cfg.task.max_upload_bytes + 1} bytes exceeds the limit of "
                                f"{cfg.task.max_upload_bytes} bytes")
        assert dead_letter_count(r) == len(dead_letters(r))

        # idle once drained: a message retaken in a loop would keep a core busy
        before, started = cpu_seconds(worker.pid), time.monotonic()
        time.sleep(3.0)  # the window CPU use is measured over
        share = (cpu_seconds(worker.pid) - before) / (time.monotonic() - started)
        print(f"worker CPU once drained: {share:.1%} of a core")
        assert share < 0.2, f"worker uses {share:.0%} of a core while the queue is empty"
        assert worker.poll() is None, "the worker died"
    finally:
        stop_worker(worker)


def test_message_failing_every_time_is_dead_lettered_after_max_deliveries(servers, clean_redis, objects,
                                                                         person_model, tasks, unique_prefix):
    r = clean_redis
    cfg = replace(servers.cfg, worker={"max_deliveries": 3})
    key = f"input/{unique_prefix}/cursed.jpg"
    objects.put(key, (PHOTOS / "rocket.jpg").read_bytes(), "image/jpeg")
    wait_until(lambda: r.llen(cfg.queue.events_key) == 1, "MinIO event", 10)
    original = r.lindex(cfg.queue.events_key, 0)
    # The key's task index holds a list, so every lookup of the task fails with Redis'
    # WRONGTYPE before any task exists.
    r.rpush(index_key(key), "not a task id")
    worker = build_worker(cfg, "cursed", r, lambda: {PERSON: person_model})
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
def test_requeues_after_worker_deaths_count_deliveries(servers, clean_redis, person_model, raw):
    r = clean_redis
    cfg = replace(servers.cfg, worker={"max_deliveries": 3})

    def liveness(worker_id: str) -> Liveness:
        return Liveness(WorkerRegistry(r, worker_id, "run", cfg.worker.lease),
                        RedisListSource(r, cfg, worker_id), TaskStore(r, cfg), Stats(), Counter,
                        interval=cfg.worker.heartbeat)

    reaper = liveness("reaper")
    r.rpush(cfg.queue.events_key, raw)
    for attempt in range(1, cfg.worker.max_deliveries + 1):
        ghost = RedisListSource(r, cfg, "ghost")
        WorkerRegistry(r, "ghost", "run", cfg.worker.lease).beat(ready="1")
        delivery = ghost.take(timeout=1)
        assert (delivery.message, delivery.attempt) == (raw, attempt)
        if attempt % 2:  # the ghost dies; a live worker's reaper requeues its message
            r.delete(heartbeat_key("ghost"))
            assert reaper.reap() == 1
            why = "worker ghost stopped heartbeating before settling it"
        else:  # the ghost dies and comes back under the same id
            assert liveness("ghost").reclaim_own() == 1
            why = "worker ghost restarted before settling it"
        assert r.llen(inflight_key("ghost")) == 0 and r.llen(cfg.queue.events_key) == 1
        requeued = unwrap(r.lindex(cfg.queue.events_key, 0))
        assert (requeued.message, requeued.attempt, requeued.last_error) == (raw, attempt + 1, why)
    # taken once more, past max_deliveries: a dead letter, never processed again
    run_in_thread(build_worker(cfg, "survivor", r, lambda: {PERSON: person_model}), timeout=60)
    (dead,) = dead_letters(r)
    assert dead["payload"] == raw.decode("utf-8", "replace") and dead["deliveries"] == 3
    assert dead["reason"] == "gave up after 3 deliveries; last error: worker ghost stopped heartbeating before settling it"
    assert r.llen(cfg.queue.events_key) == 0 and r.llen(inflight_key("survivor")) == 0


def test_dead_letters_are_capped_keeping_the_newest(servers, clean_redis, person_model):
    r = clean_redis
    cfg = replace(servers.cfg, queue={"dead_letter_max": 3}, worker={"concurrency": 1})
    r.rpush(cfg.queue.events_key, *[f"poison {i}".encode() for i in range(5)])
    run_in_thread(build_worker(cfg, "capped", r, lambda: {PERSON: person_model}), timeout=60)
    assert dead_letter_count(r) == 3
    assert [d["payload"] for d in dead_letters(r)] == ["poison 2", "poison 3", "poison 4"]
    assert all(d["reason"].startswith("poison event: not JSON") for d in dead_letters(r))


def test_settling_twice_queues_nothing_twice(servers, clean_redis):
    # The worker retries a hand-back or dead letter whose answer Redis lost (or that the reaper
    # beat it to): the second call must find the item gone and add nothing.
    r = clean_redis
    queue = RedisListSource(r, servers.cfg, "settler")
    r.rpush(servers.cfg.queue.events_key, b"first", b"second")
    first, second = queue.take(timeout=1), queue.take(timeout=1)
    queue.give_back(first, "injected")
    queue.give_back(first, "injected")
    queue.dead_letter(second, "injected")
    queue.dead_letter(second, "injected")
    assert [unwrap(x).message for x in r.lrange(servers.cfg.queue.events_key, 0, -1)] == [b"first"]
    assert [d["payload"] for d in dead_letters(r)] == ["second"]
    assert r.llen(inflight_key("settler")) == 0
