"""The results stream against the real Redis: one entry per terminal transition, written by the
transition's own script; consumer groups read each once and reclaim a dead consumer's."""
from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import falcon
import pytest

from maskflow.api import results as results_api
from maskflow.infra.stores import results
from maskflow.infra.stores.keys import RESULTS_STREAM, WEBHOOKS_STREAM, heartbeat_key
from maskflow.infra.stores.results import Group
from maskflow.infra.stores.tasks import Decision, TaskStore, derive_task_id
from maskflow.infra.wiring.config import replace

OUT = {"output": "output/s/a.jpg.png", "mask": "masks/s/a.jpg.png"}


@pytest.fixture
def task_store(servers, clean_redis):
    return TaskStore(clean_redis, servers.cfg)


def entries_by_task(r) -> Counter:
    return Counter(results.Entry(i.decode(), {k.decode(): v.decode() for k, v in f.items()}).task_id
                   for i, f in r.xrange(RESULTS_STREAM))


def test_each_terminal_transition_appends_one_entry_and_refused_ones_none(task_store, clean_redis):
    done, failed = derive_task_id("b", "input/s/a.jpg"), derive_task_id("b", "input/s/b.jpg")
    assert task_store.begin(done, "input/s/a.jpg", "e1", "0A", "w1", "r1")[0] is Decision.START
    assert clean_redis.xlen(RESULTS_STREAM) == 0  # processing is not terminal
    assert task_store.complete(done, "0A", OUT, model="general", input_key="input/s/a.jpg",
                               options={"format": "webp"})
    # a retried completion, a duplicate event and a late failure of the same version: refused, no entry
    assert not task_store.complete(done, "0A", OUT)
    assert task_store.begin(done, "input/s/a.jpg", "e1", "0A", "w2", "r2")[0] is Decision.DUPLICATE
    assert not task_store.fail(done, "0A", "late")
    task_store.begin(failed, "input/s/b.jpg", "e", "01", "w1", "r1")
    assert task_store.fail(failed, "01", "not an image")
    assert not task_store.fail(failed, "01", "not an image")
    assert entries_by_task(clean_redis) == {done: 1, failed: 1}
    entry = results.read_through(clean_redis, "0", "+", 10)[0]
    assert entry.fields["status"] == "completed" and entry.input_key == "input/s/a.jpg"
    assert entry.fields["output_key"] == OUT["output"] and entry.fields["mask_key"] == OUT["mask"]
    assert entry.fields["model"] == "general" and entry.as_json()["options"] == {"format": "webp"}
    assert entry.fields["sequencer"] == "0A".rjust(32, "0").lower() and entry.fields["etag"] == "e1"
    assert {"created_at", "started_at", "completed_at"} <= set(entry.fields)
    assert not {"worker", "run", "claim", "batches"} & set(entry.fields)
    # a new version is a new transition: its own entry
    assert task_store.begin(done, "input/s/a.jpg", "e2", "0B", "w1", "r1")[0] is Decision.START
    assert task_store.complete(done, "0B", OUT)
    assert entries_by_task(clean_redis) == {done: 2, failed: 1}


def test_a_task_with_a_callback_has_its_entry_in_the_webhooks_stream_as_well(task_store, clean_redis):
    for name in ("plain", "hooked", "hooked-failed"):
        task_store.begin(name, f"input/s/{name}.jpg", "e", "01", "w", "r")
    task_store.set_callback("hooked", "https://example.com/hook")
    task_store.set_callback("hooked-failed", "https://example.com/hook")
    task_store.complete("plain", "01", OUT)
    task_store.complete("hooked", "01", OUT)
    task_store.fail("hooked-failed", "01", "not an image")
    assert entries_by_task(clean_redis) == {"plain": 1, "hooked": 1, "hooked-failed": 1}
    hooks = {f[b"task_id"].decode(): f for _, f in clean_redis.xrange(WEBHOOKS_STREAM)}
    assert set(hooks) == {"hooked", "hooked-failed"}  # the dispatcher never sees a task without one
    by_task = {f[b"task_id"].decode(): f for _, f in clean_redis.xrange(RESULTS_STREAM)}
    assert hooks["hooked"] == by_task["hooked"] and hooks["hooked-failed"][b"status"] == b"failed"


def test_timeouts_and_exhausted_tasks_have_their_entry(servers, clean_redis):
    store = TaskStore(clean_redis, replace(servers.cfg, task={"max_attempts": 1, "timeout": 1}))
    late = derive_task_id("b", "input/s/late.jpg")
    store.begin(late, "input/s/late.jpg", "e", "01", "w1", "r1")
    store.create_pending("announced", "input/s/never.jpg", upload_deadline=1)
    assert set(store.expire_overdue(now=10**10)) == {late, "announced"}
    assert store.expire_overdue(now=10**10) == []
    dying = derive_task_id("b", "input/s/dying.jpg")
    store.begin(dying, "input/s/dying.jpg", "e", "01", "w1", "r1")
    clean_redis.delete(heartbeat_key("w1"))  # its worker died: the next claim is one too many
    assert store.begin(dying, "input/s/dying.jpg", "e", "01", "w2", "r2")[0] is Decision.EXHAUSTED
    assert entries_by_task(clean_redis) == {late: 1, "announced": 1, dying: 1}
    assert {e.status for e in results.read_through(clean_redis, "0", "+", 10)} == {"failed"}


def test_the_stream_is_capped_and_can_be_off(servers, clean_redis):
    capped = TaskStore(clean_redis, replace(servers.cfg, results={"stream_maxlen": 10}))
    for i in range(300):
        tid = f"cap{i}"
        capped.begin(tid, f"input/s/{i}.jpg", "e", "01", "w", "r")
        capped.complete(tid, "01", OUT)
    assert 10 <= clean_redis.xlen(RESULTS_STREAM) < 300  # MAXLEN ~ trims by whole nodes
    clean_redis.delete(RESULTS_STREAM)
    off = TaskStore(clean_redis, replace(servers.cfg, results={"stream_maxlen": 0}))
    off.begin("off", "input/s/off.jpg", "e", "01", "w", "r")
    assert off.complete("off", "01", OUT)
    assert clean_redis.xlen(RESULTS_STREAM) == 0


def test_a_group_reads_every_entry_once_and_reclaims_a_dead_consumers(task_store, clean_redis):
    for i in range(20):
        task_store.begin(f"g{i}", f"input/g/{i}.jpg", "e", "01", "w", "r")
        task_store.complete(f"g{i}", "01", OUT)
    a, b = Group(clean_redis, "readers", "a"), Group(clean_redis, "readers", "b")
    Group(clean_redis, "readers", "a")  # joining again is harmless (BUSYGROUP)
    by_a, by_b = [], []
    while True:
        got_a, got_b = a.read(3), b.read(4)
        if not got_a and not got_b:
            break
        by_a, by_b = by_a + got_a, by_b + got_b
    seen = by_a + by_b
    assert sorted(e.task_id for e in seen) == sorted(f"g{i}" for i in range(20))
    assert len({e.id for e in seen}) == 20 and by_a and by_b
    # a acknowledges its entries; b dies holding its own: they stay pending until c claims them
    a.ack(*[e.id for e in by_a])
    assert clean_redis.xpending(RESULTS_STREAM, "readers")["pending"] == len(by_b)
    c = Group(clean_redis, "readers", "c")
    assert c.reclaim(min_idle_ms=60_000, count=100) == []  # b might still be working on them
    claimed = c.reclaim(min_idle_ms=0, count=100)
    assert [e.id for e in claimed] == [e.id for e in by_b]
    assert claimed[0].fields == by_b[0].fields
    c.ack(*[e.id for e in claimed])
    assert clean_redis.xpending(RESULTS_STREAM, "readers")["pending"] == 0
    assert a.read(10) == [] and c.read(10) == []  # nothing is read twice


def _sse(chunk: bytes) -> tuple[str, dict]:
    """(event, data) of one server-sent event; ("comment", {}) for a comment line."""
    fields = dict(line.split(": ", 1) for line in chunk.decode().strip().split("\n"))
    if "event" not in fields:
        return "comment", {}
    return fields["event"], json.loads(fields["data"])


def test_the_api_sends_a_batchs_counts_only_after_every_result_they_count(servers, task_store, clean_redis,
                                                                          monkeypatch):
    """A client that stops when `done` reaches its total must have been sent every result: the
    CI failure this pins down was `maskflow watch --expect 200` leaving with 199 results."""
    monkeypatch.setattr(results_api, "BLOCK_MS", 50)  # the idle read's wait, before a batch-only event
    resource = results_api.ResultsResource(SimpleNamespace(cfg=servers.cfg, tasks=task_store, redis=clean_redis))
    keys = [f"input/c/{name}.jpg" for name in "abcd"]
    for key in keys[:3]:
        task_store.begin(key, key, "e", "01", "w", "r")

    def follow(after: str):
        resp = falcon.Response()
        resource._stream(resp, after, "input/c/")
        return (_sse(chunk) for chunk in resp.stream)

    live = follow("$")
    assert next(live) == ("comment", {})
    kind, batch = next(live)
    assert kind == "batch" and batch["total"] == 3 and batch["done"] == 0
    task_store.complete(keys[0], "01", OUT)
    task_store.complete(keys[1], "01", OUT)  # both land before the stream reads either
    first, second = next(live), next(live)
    assert first[1]["input_key"] == keys[0] and first[1]["batch"]["done"] == 0  # not 2: b is still to come
    assert second[1]["input_key"] == keys[1] and second[1]["batch"]["done"] == 2
    task_store.complete(keys[2], "01", OUT)
    assert next(live)[1]["batch"] == {"prefix": "input/c/", "total": 3, "done": 3,
                                      "counts": {"pending": 0, "processing": 0, "completed": 3, "failed": 0}}
    task_store.create_pending(keys[3], keys[3])  # counts that move without a result
    kind, batch = next(live)
    assert kind == "batch" and batch["total"] == 4 and batch["done"] == 3
    # a replay: no counts until it has caught up, as they count results still to be replayed
    replay = [event for _, event in zip(range(4), follow("0"))]
    assert [kind for kind, _ in replay] == ["comment", "result", "result", "result"]
    assert [event.get("batch", {}).get("done") for _, event in replay[1:]] == [None, None, 3]
    # the JSON page: counts only on a page that got to the newest entry
    cut, cut_next, cut_batch = resource._read("0", "input/c/", 2, 0)
    assert len(cut) == 2 and cut_batch is None
    rest, _, batch = resource._read(cut_next, "input/c/", 10, 0)
    assert [e.input_key for e in rest] == [keys[2]] and batch["done"] == 3
