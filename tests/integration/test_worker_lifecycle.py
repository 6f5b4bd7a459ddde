"""Issue 4 acceptance under failure: broken model, SIGKILLed workers, Redis and MinIO outages.

Each test runs its own worker processes (no module-wide workers), so it controls who consumes.
"""
from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections import Counter

import cv2
import numpy as np

from checks import PHOTOS, check_result, make_photos, queued_events, start_worker, stop_worker
from maskflow.infra.domain.outputs import result_keys
from maskflow.infra.ops.processes import wait_until
from maskflow.infra.stores import results
from maskflow.infra.stores.keys import inflight_key
from maskflow.infra.stores.workers import worker_status
from maskflow.infra.wiring.config import replace


def batch_done(tasks, prefix: str, total: int):
    """The batch's summary once all `total` tasks under `prefix` are done, else None."""
    summary = tasks.batch(prefix)
    return summary if summary and summary.total == total and summary.done == total else None


def test_worker_with_broken_model_consumes_nothing_then_good_worker_drains(
        servers, clean_redis, objects, person_model, tasks, unique_prefix, tmp_path):
    cfg = replace(servers.cfg, model={"path": str(tmp_path / "missing.onnx")})
    broken = start_worker(cfg, "broken", stderr=subprocess.PIPE, text=True)
    keys = [f"input/{unique_prefix}/backlog-{i}.jpg" for i in range(3)]
    try:
        r = servers.redis()
        wait_until(lambda: worker_status(r, "broken").get("ready") == "0", "broken worker heartbeat", 30)
        assert "missing.onnx" in worker_status(r, "broken")["reason"]
        for key in keys:
            objects.put(key, (PHOTOS / "rocket.jpg").read_bytes(), "image/jpeg")
        # MinIO delivers within ~3 s; the broken worker must leave every event queued.  Compared
        # by key: a late or duplicate event of an earlier test may sit in the list as well.
        wait_until(lambda: set(keys) <= {e.key for e in queued_events(r, servers.cfg.queue.events_key)}, "events queued", 30)
        assert all(tasks.find_by_key(k) is None for k in keys)
    finally:
        broken.send_signal(signal.SIGTERM)
        _, stderr = broken.communicate(timeout=20)
    assert "model failed to load" in stderr and "missing.onnx" in stderr
    good = start_worker(servers.cfg, "good", "--burst")
    try:
        assert good.wait(timeout=120) == 0
    finally:
        stop_worker(good)
    for key in keys:
        check_result(servers, objects, person_model, key, (PHOTOS / "rocket.jpg").read_bytes(), tasks)


def test_200_images_with_a_worker_sigkilled_while_it_holds_events(servers, clean_redis, mc, objects, tasks,
                                                                    unique_prefix, tmp_path):
    folder = tmp_path / "b1"
    make_photos(folder, 200, 900, quality=85)
    r = servers.redis()
    victim = {"proc": start_worker(servers.cfg, "victim")}
    stop = threading.Event()
    kills = []  # how many events the victim held when it was killed

    def chaos():
        # Kill on the victim's own progress, not on a clock: a fast machine once drained the
        # whole batch before a 3 s schedule killed twice.
        while not stop.is_set() and len(kills) < 4:
            held = r.llen(inflight_key("victim"))
            if not held:
                stop.wait(0.02)  # polling interval of the victim's in-flight list
                continue
            victim["proc"].kill()
            victim["proc"].wait()
            kills.append(held)
            victim["proc"] = start_worker(servers.cfg, "victim")

    killer = threading.Thread(target=chaos, daemon=True)
    steady = None
    try:
        killer.start()
        mc("mirror", str(folder), f"local/{servers.cfg.minio.bucket}/input/{unique_prefix}/b1/")
        # The victim works alone until killed twice, so the batch cannot finish before that.
        wait_until(lambda: len(kills) >= 2, "two kills of the victim", 120)
        steady = start_worker(servers.cfg, "steady")
        summary = wait_until(lambda: batch_done(tasks, f"input/{unique_prefix}/b1/", 200), "200 tasks done", 300,
                             state=lambda: tasks.batch(f"input/{unique_prefix}/b1/"))
    finally:
        stop.set()
        killer.join()
        stop_worker(victim["proc"])
        if steady is not None:
            stop_worker(steady)
    assert summary is not None and summary.total == 200
    assert summary.counts["completed"] == 200, (summary.counts, [(t.input_key, t.error) for t in summary.failures])
    for i in range(200):
        out, mask = result_keys(f"input/{unique_prefix}/b1/img-{i:03d}.jpg").values()
        assert objects.exists(out) and objects.exists(mask), i
    # every task has exactly one results stream entry, however often its workers were killed
    per_key = Counter(e.input_key for e in results.read_through(r, "0", "+", 10_000))
    assert per_key == {f"input/{unique_prefix}/b1/img-{i:03d}.jpg": 1 for i in range(200)}


def test_redis_restart_and_minio_outage_mid_batch(servers, clean_redis, mc, objects, tasks,
                                                  unique_prefix, tmp_path):
    stack = servers.stack
    folder = tmp_path / "b2"
    make_photos(folder, 120, 900, quality=85)
    # one single-threaded worker keeps the batch running long enough to break things under it
    cfg = replace(servers.cfg, worker={"concurrency": 1})
    worker = start_worker(cfg, "outage")
    prefix = f"input/{unique_prefix}/b2/"
    try:
        mc("mirror", str(folder), f"local/{servers.cfg.minio.bucket}/{prefix}")
        wait_until(lambda: (tasks.batch(prefix) or None) and tasks.batch(prefix).done >= 10, "first results", 60)
        stack.stop("redis")
        stack.start(stack.redis_service)
        wait_until(lambda: tasks.batch(prefix).done >= 40, "progress after Redis restart", 120)
        done_before = tasks.batch(prefix).done
        assert done_before < 120, "batch finished before the MinIO outage: nothing was tested"
        stack.stop("minio")
        outage_started = time.monotonic()
        threading.Event().wait(10.0)  # the outage itself lasts 10 s
        stack.start(stack.minio_service)
        assert time.monotonic() - outage_started >= 10
        summary = wait_until(lambda: batch_done(tasks, prefix, 120), "120 tasks done", 300,
                             state=lambda: tasks.batch(prefix))
    finally:
        stop_worker(worker)
    assert summary is not None and summary.counts["completed"] == 120, (
        summary and summary.counts, summary and [(t.input_key, t.error) for t in summary.failures])
    masks = [result_keys(f"{prefix}img-{i:03d}.jpg")["mask"] for i in range(120)]
    assert all(objects.exists(m) for m in masks)
    img = cv2.imdecode(np.frombuffer(objects.get(masks[-1]).data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.ndim == 2


