"""A worker pool per model, on the real MinIO and Redis with real worker processes: events end on
the pool that serves their model, a kill while routing loses and repeats nothing, and a model
nobody serves fails its tasks at the timeout without touching the others."""
from __future__ import annotations

import json

import pytest

from checks import counting_commands, make_photos, start_worker, stop_worker
from maskflow.infra.ops.processes import wait_until
from maskflow.infra.stores.keys import DEAD_LETTER_KEY, inflight_key, model_queue_key, task_key
from maskflow.infra.stores import queue
from maskflow.infra.stores.queue import RedisListSource, wrap
from maskflow.infra.stores.tasks import derive_task_id
from maskflow.infra.stores.workers import worker_status
from maskflow.infra.wiring.config import replace


def pool(servers, *models: str, **worker):
    return replace(servers.cfg, worker={"models": models, **worker})


def tasks_of(tasks, cfg, prefix: str, rels: list[str]):
    return [tasks.get(derive_task_id(cfg.minio.bucket, f"{prefix}{rel}")) for rel in rels]


def all_done(tasks, cfg, prefix, rels):
    found = tasks_of(tasks, cfg, prefix, rels)
    return found if all(t is not None and t.terminal for t in found) else None


def drop(mc, servers, folder, prefix: str, model: str | None = None) -> None:
    attr = ["--attr", f"X-Amz-Meta-Model={model}"] if model else []
    mc("mirror", *attr, str(folder), f"local/{servers.cfg.minio.bucket}/{prefix}")


@pytest.mark.parametrize("shared", [True, False], ids=["u2net-pool-takes-shared", "u2net-pool-own-list-only"])
def test_each_task_ends_on_the_pool_of_its_model(servers, clean_redis, mc, tasks, unique_prefix, tmp_path,
                                                 shared):
    r = clean_redis
    people, things = tmp_path / "people", tmp_path / "things"
    person_rels, u2net_rels = make_photos(people, 6), make_photos(things, 4)
    workers = {"person-pool": start_worker(pool(servers, "person"), "person-pool"),
               "u2net-pool": start_worker(pool(servers, "u2net", shared_queue=shared), "u2net-pool")}
    try:
        for name in workers:
            wait_until(lambda n=name: worker_status(r, n).get("ready") == "1", f"{name} ready", 120)
        assert worker_status(r, "u2net-pool")["models"] == "u2net"
        drop(mc, servers, people, f"input/{unique_prefix}/people/")
        drop(mc, servers, things, f"input/{unique_prefix}/things/", "u2net")
        wait_until(lambda: all_done(tasks, servers.cfg, f"input/{unique_prefix}/people/", person_rels)
                   and all_done(tasks, servers.cfg, f"input/{unique_prefix}/things/", u2net_rels),
                   "every task done", 180)
    finally:
        for proc in workers.values():
            stop_worker(proc)
    for prefix, rels, worker, model in ((f"input/{unique_prefix}/people/", person_rels, "person-pool", None),
                                        (f"input/{unique_prefix}/things/", u2net_rels, "u2net-pool", "u2net")):
        for task in tasks_of(tasks, servers.cfg, prefix, rels):
            assert task.status == "completed" and task.model == model, task
            assert r.hget(task_key(task.task_id), "worker").decode() == worker, task
    assert not r.llen(DEAD_LETTER_KEY)


def test_a_take_is_one_round_trip_while_events_wait(servers, clean_redis):
    r, events = clean_redis, servers.cfg.queue.events_key
    source = RedisListSource(servers.redis(), servers.cfg, "light-0")
    source.serve(("person", "general"))
    r.rpush(events, b"warm-up", b"first", b"second")
    assert source.take(0.2).message == b"warm-up"  # Redis has the script from here on
    r.rpush(model_queue_key(events, "general"), b"for-general")
    sent = counting_commands(source.r)
    assert [source.take(0.2).message for _ in range(3)] == [b"for-general", b"first", b"second"]
    assert sent == ["EVALSHA"] * 3
    assert source.take(0.2) is None and sent[3:] == ["EVALSHA", "BLMOVE"]
    assert r.lrange(inflight_key("light-0"), 0, -1) == [b"warm-up", b"for-general", b"first", b"second"]


def test_a_take_drops_the_twin_of_a_message_it_took_and_nothing_else(servers, clean_redis, monkeypatch):
    """MinIO's fast and durable targets write each event as the same bytes: the second copy is
    dropped in the take's own script.  A redelivery, a message routed to a model's list and a
    copy after the window are taken (the claim refuses a duplicate, as before)."""
    r, events = clean_redis, servers.cfg.queue.events_key
    source = RedisListSource(servers.redis(), servers.cfg, "light-0")
    source.serve(("person", "general"))
    r.rpush(events, b"event-a", b"event-b", b"event-a")
    assert [source.take(0.2).message for _ in range(2)] == [b"event-a", b"event-b"]
    sent = counting_commands(source.r)
    r.rpush(events, b"event-c")
    assert source.take(0.2).message == b"event-c"  # past the twin of a, in the same round trip
    assert sent == ["EVALSHA"] and not r.llen(events)
    r.rpush(events, b"event-b", wrap(b"event-b", 1, "handed back"))
    redelivery = source.take(0.2)
    assert (redelivery.message, redelivery.attempt) == (b"event-b", 2)
    r.rpush(model_queue_key(events, "general"), b"event-a")  # routed here by another worker
    assert source.take(0.2).message == b"event-a"
    monkeypatch.setattr(queue, "TWIN_WINDOW_S", 0)
    r.rpush(events, b"event-c")
    assert source.take(0.2).message == b"event-c"
    assert source.take(0.2) is None
    assert r.lrange(inflight_key("light-0"), 0, -1) == [
        b"event-a", b"event-b", b"event-c", wrap(b"event-b", 1, "handed back"), b"event-a", b"event-c"]


def test_a_source_off_the_shared_list_takes_only_its_models_lists(servers, clean_redis):
    r, events = clean_redis, servers.cfg.queue.events_key
    source = RedisListSource(r, servers.cfg, "heavy-0")
    source.serve(("u2net", "portrait"), shared=False)
    r.rpush(events, b"for-anyone")
    r.rpush(model_queue_key(events, "portrait"), b"for-portrait")
    r.rpush(model_queue_key(events, "u2net"), b"for-u2net")
    assert source.take(0.2).message == b"for-portrait"
    assert source.take(0.2).message == b"for-u2net"
    assert source.take(0.2) is None
    assert r.lrange(events, 0, -1) == [b"for-anyone"]
    assert r.lrange(inflight_key("heavy-0"), 0, -1) == [b"for-portrait", b"for-u2net"]
    with pytest.raises(ValueError):
        source.serve((), shared=False)


def test_a_router_killed_mid_routing_loses_and_repeats_nothing(servers, clean_redis, mc, tasks,
                                                              unique_prefix, tmp_path):
    r = clean_redis
    folder, prefix = tmp_path / "things", f"input/{unique_prefix}/things/"
    rels = make_photos(folder, 30)
    router_cfg = pool(servers, "person", concurrency=1)
    router = start_worker(router_cfg, "router")
    kills = []  # events the router held, unrouted, when it was killed
    try:
        wait_until(lambda: worker_status(r, "router").get("ready") == "1", "router ready", 60)
        drop(mc, servers, folder, prefix, "u2net")
        while len(kills) < 3:
            wait_until(lambda: r.llen(inflight_key("router")), "the router holding an event", 60, every=0.001)
            router.kill()
            router.wait()
            held = r.llen(inflight_key("router"))
            if held:
                kills.append(held)
            router = start_worker(router_cfg, "router")  # its next start requeues what it held
        u2net_list = model_queue_key(servers.cfg.queue.events_key, "u2net")
        wait_until(lambda: r.llen(u2net_list) == len(rels), "every event on u2net's list", 60,
                   state=lambda: f"{r.llen(u2net_list)} there")
        serving = start_worker(replace(pool(servers, "u2net"), model={"concurrent_runs": 2}), "u2net-pool")
        try:
            done = wait_until(lambda: all_done(tasks, servers.cfg, prefix, rels), "every task done", 300)
            wait_until(lambda: worker_status(r, "u2net-pool").get("processed") == str(len(rels)),
                       "the u2net pool's counters", 10, state=lambda: worker_status(r, "u2net-pool"))
        finally:
            stop_worker(serving)
    finally:
        stop_worker(router)
    assert len(kills) == 3
    assert all(t.status == "completed" and t.model == "u2net" and t.attempts == 1 for t in done), done
    assert r.llen(u2net_list) == 0 and not r.llen(DEAD_LETTER_KEY)


def test_a_model_without_a_pool_fails_at_the_timeout_and_the_others_go_on(servers, clean_redis, mc, tasks,
                                                                         unique_prefix, tmp_path):
    r = clean_redis
    cfg = replace(pool(servers, "person"), task={"timeout": 4})
    orphans, others = tmp_path / "portraits", tmp_path / "people"
    orphan_rels, other_rels = make_photos(orphans, 3), make_photos(others, 3)
    worker = start_worker(cfg, "person-only")
    try:
        wait_until(lambda: worker_status(r, "person-only").get("ready") == "1", "worker ready", 60)
        drop(mc, servers, orphans, f"input/{unique_prefix}/portraits/", "portrait")
        drop(mc, servers, others, f"input/{unique_prefix}/people/")
        people = wait_until(lambda: all_done(tasks, cfg, f"input/{unique_prefix}/people/", other_rels),
                            "the person tasks", 60)
        failed = wait_until(lambda: all_done(tasks, cfg, f"input/{unique_prefix}/portraits/", orphan_rels),
                            "the portrait tasks to time out", 60)
    finally:
        stop_worker(worker)
    assert all(t.status == "completed" for t in people)
    for task in failed:
        assert task.status == "failed" and task.error.startswith("no worker served model 'portrait' within 4 s")
    # they waited on their model's list and never went round: each event there once, none dead
    waiting = [json.loads(m)[0]["Event"][0]["s3"]["object"]["key"]
               for m in r.lrange(model_queue_key(cfg.queue.events_key, "portrait"), 0, -1)]
    assert sorted(waiting) == sorted(f"input%2F{unique_prefix}%2Fportraits%2F{rel}" for rel in orphan_rels)
    assert not r.llen(DEAD_LETTER_KEY)
