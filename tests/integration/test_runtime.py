"""The worker loop in-process, against real Redis and MinIO, with faults injected into collaborators."""
from __future__ import annotations

import json
import threading

import pytest
import redis

from checks import PHOTOS, check_result
from maskflow.functions.events import parse_message
from maskflow.functions.worker import Worker, build_worker
from maskflow.infra.domain.catalog import PERSON
from maskflow.infra.ops.processes import wait_until
from maskflow.infra.stores.keys import DEAD_LETTER_KEY, WORKERS_KEY, Heartbeat, heartbeat_key, inflight_key
from maskflow.infra.stores.queue import RedisListSource
from maskflow.infra.stores.source import Delivery
from maskflow.infra.stores.tasks import TaskStore, derive_task_id
from maskflow.infra.wiring.config import replace


@pytest.fixture
def quiet_queue(servers, clean_redis):
    """No worker processes run here; MinIO's events for these tests land in the list."""
    return clean_redis


def make_worker(servers, person_model, worker_id: str) -> Worker:
    return build_worker(servers.cfg, worker_id, servers.redis(), lambda: {PERSON: person_model})


class TaskStoreFailingOnce(TaskStore):
    """The real task store, except that its first `begin` raises as if Redis were unreachable."""

    def __init__(self, r, cfg):
        super().__init__(r, cfg)
        self.begin_calls = 0

    def begin(self, *args, **kwargs):
        self.begin_calls += 1
        if self.begin_calls == 1:
            raise RuntimeError("injected: task store unavailable")
        return super().begin(*args, **kwargs)


class TaskStoreLosingFirstAnswer(TaskStore):
    """The real task store, except that its first `begin` runs and then loses its answer,
    as when Redis stops while replying."""

    def __init__(self, r, cfg):
        super().__init__(r, cfg)
        self.begin_calls = 0

    def begin(self, *args, **kwargs):
        self.begin_calls += 1
        answer = super().begin(*args, **kwargs)
        if self.begin_calls == 1:
            raise redis.ConnectionError("injected: connection closed by server")
        return answer


class SourceLosingFirstClaim(RedisListSource):
    """The real queue, except that its first claim moves an event into our in-flight list and
    then loses its answer, as when Redis stops while replying."""

    def __init__(self, r, cfg, worker_id):
        super().__init__(r, cfg, worker_id)
        self.lost: Delivery | None = None

    def take(self, timeout):
        delivery = super().take(timeout)
        if delivery is not None and self.lost is None:
            self.lost = delivery
            raise redis.ConnectionError("injected: connection closed by server")
        return delivery


def drain_with(servers, r, person_model, worker_id: str, task_store: TaskStore) -> None:
    """Run a worker with the real queue and objects and this task store until the queue is empty."""
    build_worker(servers.cfg, worker_id, r, lambda: {PERSON: person_model}, tasks=task_store).run(burst=True)


def upload_and_wait_for_event(servers, objects, r, key: str, data: bytes) -> None:
    queued = r.llen(servers.cfg.queue.events_key)
    objects.put(key, data, "image/jpeg")
    wait_until(lambda: r.llen(servers.cfg.queue.events_key) > queued, "MinIO event", 10)


def queue_coffee(servers, objects, r, key: str) -> bytes:
    data = (PHOTOS / "coffee.jpg").read_bytes()
    upload_and_wait_for_event(servers, objects, r, key, data)
    return data


def test_unsettled_event_is_handed_back_and_worker_survives(servers, quiet_queue, objects, person_model, tasks,
                                                            unique_prefix):
    r = quiet_queue
    key = f"input/{unique_prefix}/flaky.jpg"
    data = queue_coffee(servers, objects, r, key)
    flaky_tasks = TaskStoreFailingOnce(r, servers.cfg)
    drain_with(servers, r, person_model, "flaky", flaky_tasks)
    assert flaky_tasks.begin_calls == 2, "the event must come back and be taken again"
    check_result(servers, objects, person_model, key, data, tasks)
    assert r.llen(inflight_key("flaky")) == 0
    assert not r.sismember(WORKERS_KEY, "flaky"), "a clean exit deregisters the worker"


def test_begin_retried_after_a_lost_answer_processes_the_task(servers, quiet_queue, objects, person_model,
                                                             tasks, unique_prefix):
    r = quiet_queue
    key = f"input/{unique_prefix}/lost-answer.jpg"
    data = queue_coffee(servers, objects, r, key)
    losing = TaskStoreLosingFirstAnswer(r, servers.cfg)
    drain_with(servers, r, person_model, "lossy", losing)
    assert losing.begin_calls >= 2, "the lost answer must be retried"
    check_result(servers, objects, person_model, key, data, tasks)
    assert tasks.find_by_key(key).attempts == 1


def test_an_event_whose_claim_lost_its_answer_is_requeued_and_processed(servers, quiet_queue, objects, person_model,
                                                                         tasks, unique_prefix):
    r = quiet_queue
    key = f"input/{unique_prefix}/lost-claim.jpg"
    data = queue_coffee(servers, objects, r, key)
    cfg = replace(servers.cfg, worker={"heartbeat": 1, "lease": 5})
    queue = SourceLosingFirstClaim(r, cfg, "claimer")
    worker = build_worker(cfg, "claimer", r, lambda: {PERSON: person_model}, source=queue)
    running = threading.Thread(target=worker.run)
    running.start()
    try:
        wait_until(lambda: (task := tasks.find_by_key(key)) is not None and task.terminal,
                   "the event the lost claim left in flight, processed", 30)
    finally:
        worker.stop()
        running.join(30)
    assert queue.lost is not None and [e.key for e in parse_message(queue.lost.message)] == [key]
    check_result(servers, objects, person_model, key, data, tasks)
    assert r.llen(inflight_key("claimer")) == 0


def test_handler_bug_fails_one_task_and_is_dead_lettered(servers, quiet_queue, objects, person_model, tasks,
                                                         unique_prefix):
    r = quiet_queue
    bad_key, good_key = f"input/{unique_prefix}/bug.jpg", f"input/{unique_prefix}/fine.jpg"
    data = (PHOTOS / "rocket.jpg").read_bytes()
    upload_and_wait_for_event(servers, objects, r, bad_key, data)

    class ModelWithBug:
        def predict(self, rgb):
            if predicted:
                return person_model.predict(rgb)
            predicted.append(True)
            raise ValueError("injected bug")

    predicted: list = []
    worker = build_worker(servers.cfg, "buggy", r, lambda: {PERSON: ModelWithBug()})
    worker.run(burst=True)
    task = tasks.get(derive_task_id(servers.cfg.minio.bucket, bad_key))
    assert task.status == "failed" and task.error == "internal error: ValueError: injected bug"
    dead = [json.loads(x) for x in r.lrange(DEAD_LETTER_KEY, 0, -1)]
    assert any(bad_key in d["reason"] and "ValueError" in d["reason"] for d in dead)
    # the same worker object goes on to process the next event normally
    upload_and_wait_for_event(servers, objects, r, good_key, data)
    worker.stopping.clear()
    worker.run(burst=True)
    check_result(servers, objects, person_model, good_key, data, tasks)


def test_folder_markers_make_no_task(servers, quiet_queue, objects, person_model, tasks, unique_prefix):
    r = quiet_queue
    marker, photo = f"input/{unique_prefix}/folder/", f"input/{unique_prefix}/folder/a.jpg"
    data = (PHOTOS / "chelsea.jpg").read_bytes()
    upload_and_wait_for_event(servers, objects, r, marker, b"")
    upload_and_wait_for_event(servers, objects, r, photo, data)
    make_worker(servers, person_model, "markers").run(burst=True)
    assert tasks.find_by_key(marker) is None
    check_result(servers, objects, person_model, photo, data, tasks)


class ModelHeldAtPredict:
    """The real model, but predict() waits until the test lets it go."""

    def __init__(self, person_model):
        self.model = person_model
        self.entered = threading.Event()
        self.release = threading.Event()

    def predict(self, rgb):
        self.entered.set()
        assert self.release.wait(60), "the test never released the model"
        return self.model.predict(rgb)


def test_a_stopping_worker_keeps_its_heartbeat_until_its_events_are_done(servers, quiet_queue, objects,
                                                                        person_model, tasks, unique_prefix):
    """SIGTERM finishes in-flight events; a worker that went silent meanwhile would see them
    requeued by the reaper of others and run twice."""
    r = quiet_queue
    key = f"input/{unique_prefix}/slow.jpg"
    data = (PHOTOS / "coffee.jpg").read_bytes()
    upload_and_wait_for_event(servers, objects, r, key, data)
    held = ModelHeldAtPredict(person_model)
    worker = make_worker(servers, held, "draining")
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    assert held.entered.wait(30)
    worker.stop()  # what the first SIGTERM does
    beat = r.hget(heartbeat_key("draining"), Heartbeat.UPDATED)
    # Past a whole lease: the heartbeat must have been renewed meanwhile.
    wait_until(lambda: r.hget(heartbeat_key("draining"), Heartbeat.UPDATED) != beat,
               "a heartbeat while draining", 3 * servers.cfg.worker.lease)
    assert r.exists(heartbeat_key("draining"))
    held.release.set()
    thread.join(60)
    assert not thread.is_alive()
    check_result(servers, objects, person_model, key, data, tasks)
    assert r.llen(servers.cfg.queue.events_key) == 0, "nothing was requeued"
