"""A worker process: consumer threads that run the steps, and one maintenance thread.

`worker.concurrency` consumer threads share the models and the client pools, so the download
of one image overlaps the inference of another; each one runs steps.consume until stopped.  The maintenance thread is functions/liveness.py.  First SIGTERM/SIGINT: finish
in-flight events and exit; a second one exits at once (in-flight events then return through
the reaper or this worker id's next start).  Delivery is at-least-once; duplicates are
absorbed by the task transitions (infra/stores/tasks.py).
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import redis

from maskflow.functions import steps
from maskflow.functions.handlers import Model
from maskflow.functions.liveness import Liveness, Stats
from maskflow.infra.domain.outputs import RESULT_KINDS
from maskflow.infra.domain.catalog import DEFAULT, check_name
from maskflow.infra.domain.segmenter import ModelError, Segmenter
from maskflow.infra.stores.objects import ObjectStore
from maskflow.infra.stores.queue import RedisListSource
from maskflow.infra.stores.source import Leases
from maskflow.infra.stores.tasks import TaskStore
from maskflow.infra.stores.workers import WorkerRegistry
from maskflow.infra.wiring.config import Config
from maskflow.infra.wiring.retries import transient_policy, with_retries

log = logging.getLogger("maskflow.worker")
INSTALL_COMMAND = "python -m maskflow.infra.ops.install"


class Worker:
    """Serves events with the models `load_models` gives, by catalogue name.

    Every store is used through the transient-fault policy (infra/wiring/retries.py), which
    stops retrying once the consumers are done.
    """

    def __init__(self, cfg: Config, source: Leases, tasks: TaskStore, objects: ObjectStore,
                 registry: WorkerRegistry, load_models: Callable[[], Mapping[str, Model]]):
        self.cfg = cfg
        self.worker_id = registry.worker_id
        self.load_models = load_models
        self.stopping = threading.Event()
        self._consumers_done = threading.Event()  # the heartbeat lasts until then
        policy = transient_policy(cfg.worker, halt=self._consumers_done)
        self.source, self.tasks, self.objects, self.registry = (
            with_retries(store, policy) for store in (source, tasks, objects, registry))
        self.stats = Stats()
        self.held = steps.Holding()
        self.liveness = Liveness(self.registry, self.source, self.tasks, self.stats, self.held.snapshot,
                                 interval=cfg.worker.heartbeat)
        self._writer = ThreadPoolExecutor(max(1, cfg.worker.concurrency * (len(RESULT_KINDS) - 1)),
                                          thread_name_prefix="publish")

    # -- lifecycle --------------------------------------------------------------------------
    def run(self, burst: bool = False) -> None:
        """Serve until stopped; with burst=True, exit once the queue is empty."""
        self._consumers_done.clear()
        parts = self._load()
        self.liveness.beat()
        if parts is not None:
            self.liveness.reclaim_own()
        maintenance = threading.Thread(target=self.liveness.maintain, args=(self._consumers_done,),
                                       name="maintenance", daemon=True)
        maintenance.start()
        consumers = [threading.Thread(target=steps.consume, args=(parts, self.stopping, burst),
                                      name=f"consumer-{i}")
                     for i in range(self.cfg.worker.concurrency)] if parts is not None else []
        for t in consumers:
            t.start()
        try:
            for t in consumers:
                t.join()
            if not consumers:
                self.stopping.wait()
        finally:
            self.stopping.set()
            self._consumers_done.set()
            maintenance.join(timeout=5)
            try:
                self.registry.retire()
            except redis.RedisError as exc:
                log.warning("could not deregister: %s", exc)

    def _load(self) -> steps.Parts | None:
        """The steps' parts with the models loaded; None (not ready, consuming nothing) if they fail."""
        try:
            models = self.load_models()
        except Exception as exc:  # noqa: BLE001 - any load failure keeps the worker not-ready
            self.liveness.not_ready_reason = f"model failed to load: {exc}"
            log.error("%s; consuming nothing until restarted with a working model",
                      self.liveness.not_ready_reason)
            return None
        self.liveness.ready = True
        self.liveness.models = tuple(models)
        self.source.serve(tuple(models), shared=self.cfg.worker.shared_queue)
        return steps.Parts(cfg=self.cfg, worker_id=self.worker_id, run_id=self.registry.run_id,
                           source=self.source, tasks=self.tasks, objects=self.objects,
                           models=models, stats=self.stats, writer=self._writer, held=self.held)

    def stop(self) -> None:
        self.stopping.set()


def load_models(cfg: Config) -> dict[str, Segmenter]:
    """The models this worker serves, once per process: the ones `worker.models` names, else the
    default one and every other whose file is installed.  ModelError names every one that a
    worker must serve and cannot load, and the command that installs a missing file."""
    run_slots = threading.BoundedSemaphore(cfg.model.concurrent_runs)
    required = set(check_name(name) for name in cfg.worker.models) or {DEFAULT}
    loaded, problems = {}, []
    for name, file in cfg.model_files.items():
        if name not in required and (cfg.worker.models or not file.path.exists()):
            continue  # another pool's, or not installed here
        try:
            loaded[name] = Segmenter.load(file.path, file.input_size, manifest_path=file.manifest,
                                          intra_op_threads=cfg.model.intra_op_threads,
                                          inter_op_threads=cfg.model.inter_op_threads, run_slots=run_slots)
        except ModelError as exc:
            install = f" (install it: {INSTALL_COMMAND})" if file.fetch else ""
            problems.append(f"{name}: {exc}{install}")
    if problems:
        raise ModelError("; ".join(problems))
    return loaded


def build_worker(cfg: Config, worker_id: str, r: redis.Redis,
                 load_models: Callable[[], Mapping[str, Model]], **stores) -> Worker:
    """A worker with its real stores, one Redis client shared; `stores` replaces some of them
    by name (source, tasks, objects, registry)."""
    run_id = uuid.uuid4().hex[:12]  # tells this process from an earlier run of the same worker id
    parts = {"source": RedisListSource(r, cfg, worker_id), "tasks": TaskStore(r, cfg),
             "objects": ObjectStore(cfg),
             "registry": WorkerRegistry(r, worker_id, run_id, cfg.worker.lease), **stores}
    return Worker(cfg, load_models=load_models, **parts)


def install_signal_handlers(worker: Worker) -> None:
    def handle(signum, _frame):
        if worker.stopping.is_set():
            log.warning("second signal: exiting now; in-flight events return via the reaper")
            os._exit(1)
        log.info("signal %d: finishing in-flight events, then exiting", signum)
        worker.stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def reuse_freed_buffers() -> bool:
    """Keep freed image-sized buffers in the heap for the next image (glibc only).

    By default glibc maps each buffer of a few MB afresh and unmaps it when freed, so every
    decoded photo, tensor and cut-out pays page faults on first touch: py-spy put 9 % of a
    worker's time in one 3 MB cv2.merge.  tests/bench/model.py, 1024x768 whole loop: 26.9 ->
    18.0 ms.  Buffers above 32 MB are still mapped, and the heap is trimmed past 64 MB free.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:  # not glibc
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 64 << 20))
