"""The loop that feeds handlers: `maskflow worker` / `python -m maskflow.functions`.

Delivery is at-least-once through the reliable-queue pattern in infra/stores/queue.py (per-worker
in-flight list, heartbeat, reaper); duplicates are absorbed by the task transitions in
infra/stores/tasks.py.  Per event:

    take (LMOVE into our in-flight list) -> parse (poison -> dead letter) -> trust checks
    -> begin task -> handler, with tenacity retries for transient faults -> complete / fail -> ack

Failure policy:
* poison (not MinIO's access format, a wrong type or value anywhere): dead letter at once;
* outside the trust boundary (another bucket, a key outside input/): dead letter; an object
  larger than `task.max_upload_bytes` by its event's size fails its task without being read;
* a message that cannot be settled (the task store raises, say) is handed back with its
  delivery count; after `worker.max_deliveries` deliveries, counting requeues by the reaper,
  it is dead-lettered with its last error instead, so nothing is retaken forever;
* transient (S3 or Redis unreachable, timeouts, 5xx, SlowDown): retried with exponential
  backoff and jitter, `worker.retry_attempts` times; then the task fails and the event is
  dead-lettered with the reason;
* permanent (image rejected, object gone): the task fails at once with a readable error;
* a bug in a handler fails that task with the exception's name; the worker keeps running;
* a worker that dies mid-task: its events come back through the reaper; a task whose worker
  died `task.max_attempts` times fails (infra/stores/tasks.py), so a poison image cannot kill
  workers forever; a task stuck past `task.timeout` is failed by the maintenance thread.

Threads: `worker.concurrency` consumers share one model session and one client pool, so the
download of one image overlaps the inference of another; one maintenance thread heartbeats,
reaps dead workers and expires overdue tasks.  First SIGTERM/SIGINT: finish in-flight events
and exit; a second one exits at once (in-flight events then return through the reaper or
this worker id's next start).
"""
from __future__ import annotations

import ctypes
import enum
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import redis
import urllib3
from minio.error import InvalidResponseError, S3Error, ServerError
from tenacity import (Retrying, retry_if_exception, stop_after_attempt,
                      wait_exponential, wait_random)

from maskflow.functions.events import ObjectCreated, PoisonEvent, parse_message
from maskflow.functions.handlers import INPUT_PREFIX, Context, Model, handle_object_created
from maskflow.infra.domain.catalog import DEFAULT, UnknownModel, named_model
from maskflow.infra.wiring.config import Config
from maskflow.infra.domain.formats import ImageRejected
from maskflow.infra.stores.keys import Heartbeat
from maskflow.infra.stores.objects import ObjectChanged, ObjectMissing, ObjectStore
from maskflow.infra.stores.queue import Delivery, EventQueue, unwrap
from maskflow.infra.stores.tasks import Decision, TaskStore, derive_task_id

log = logging.getLogger("maskflow.worker")

# S3 errors worth retrying besides any 5xx.  ClientDisconnected (MinIO's 499) is what an
# upload gets while MinIO shuts down.
TRANSIENT_S3_CODES = {"SlowDown", "RequestTimeout", "ClientDisconnected", "OperationTimedOut",
                      "XMinioServerNotInitialized"}
HISTOGRAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, urllib3.exceptions.HTTPError,
                        ConnectionError, TimeoutError, ServerError)):
        return True
    if isinstance(exc, S3Error):
        status = exc.response.status if exc.response is not None else 0
        return exc.code in TRANSIENT_S3_CODES or status >= 500
    if isinstance(exc, InvalidResponseError):
        # A 5xx without an XML body: MinIO shutting down answers 503 "http: Server closed".
        # minio-py (pinned < 8) keeps the status only in this attribute.
        return getattr(exc, "_code", 0) >= 500
    return False


@dataclass
class Stats:
    """Counters published in the heartbeat hash; the API's /metrics reads them from Redis."""
    processed: int = 0
    failed: int = 0
    seconds_sum: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * len(HISTOGRAM_BUCKETS))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, seconds: float, ok: bool) -> None:
        with self.lock:
            if ok:
                self.processed += 1
            else:
                self.failed += 1
            self.seconds_sum += seconds
            for i, bound in enumerate(HISTOGRAM_BUCKETS):
                if seconds <= bound:
                    self.buckets[i] += 1

    def fields(self) -> dict[str, str]:
        """Heartbeat fields: the counters and a Prometheus-style cumulative histogram."""
        with self.lock:
            count, seconds = str(self.processed + self.failed), f"{self.seconds_sum:.3f}"
            out = {Heartbeat.PROCESSED: str(self.processed), Heartbeat.FAILED: str(self.failed),
                   Heartbeat.DURATION_SUM: seconds,
                   Heartbeat.DURATION_COUNT: count, f"{Heartbeat.DURATION_BUCKET}+Inf": count}
            out.update({f"{Heartbeat.DURATION_BUCKET}{b}": str(n)
                        for b, n in zip(HISTOGRAM_BUCKETS, self.buckets)})
            return out


class Fate(enum.Enum):
    COMPLETED = "completed"
    FAILED = "failed"          # the task failed; the event is settled
    SKIPPED = "skipped"        # nothing to do: a folder marker, or the task was not claimed
    SUPERSEDED = "superseded"  # a newer upload replaced the input; its own event settles the task
    DEAD = "dead"              # the event must be dead-lettered (its task, if any, failed)


@dataclass(frozen=True)
class Outcome:
    """What became of one event; `reason` says why for every fate but COMPLETED."""
    fate: Fate
    reason: str = ""


class Worker:
    def __init__(self, cfg: Config, queue: EventQueue, tasks: TaskStore, objects: ObjectStore,
                 load_models: Callable[[], Mapping[str, Model]]):
        self.cfg = cfg
        self.worker_id = queue.worker_id
        self.queue = queue
        self.tasks = tasks
        self.objects = objects
        self.load_models = load_models
        self.models: Mapping[str, Model] = {}  # by catalogue name; empty until loaded
        self.not_ready_reason = ""
        self.stats = Stats()
        self.stopping = threading.Event()
        self._consumers_done = threading.Event()  # the heartbeat lasts until then
        self._held: Counter[bytes] = Counter()  # in-flight items a consumer is working on
        self._held_lock = threading.Lock()
        self._unheld_before: set[bytes] = set()  # in our in-flight list, held by nobody, last beat
        self._retry = dict(
            retry=retry_if_exception(is_transient),
            wait=wait_exponential(multiplier=0.5, max=cfg.worker.retry_max_wait) + wait_random(0, 0.5),
            stop=stop_after_attempt(cfg.worker.retry_attempts),
            before_sleep=lambda rs: log.warning("transient fault, retry %d: %s", rs.attempt_number,
                                                rs.outcome.exception() if rs.outcome else "?"),
        )

    def _retrying(self, fn: Callable, *args, **kwargs):
        """Run `fn` with the transient-fault policy; the last exception propagates."""
        return Retrying(reraise=True, **self._retry)(fn, *args, **kwargs)

    # -- lifecycle --------------------------------------------------------------------------
    def run(self, burst: bool = False) -> None:
        """Serve until stopped; with burst=True, exit once the queue is empty."""
        try:
            self.models = self.load_models()
        except Exception as exc:  # noqa: BLE001 - any load failure keeps the worker not-ready
            self.not_ready_reason = f"model failed to load: {exc}"
            log.error("%s; consuming nothing until restarted with a working model", self.not_ready_reason)
        self._beat()
        if self.models:
            moved = self._retrying(self.queue.reclaim_own)
            if moved:
                log.warning("requeued %d events left in flight by a previous run of %s", moved, self.worker_id)
        maintenance = threading.Thread(target=self._maintain, name="maintenance", daemon=True)
        maintenance.start()
        consumers = []
        if self.models:
            consumers = [threading.Thread(target=self._consume, args=(burst,), name=f"consumer-{i}")
                         for i in range(self.cfg.worker.concurrency)]
            for t in consumers:
                t.start()
        try:
            if consumers:
                for t in consumers:
                    t.join()
            else:
                self.stopping.wait()
        finally:
            self.stopping.set()
            self._consumers_done.set()
            maintenance.join(timeout=5)
            try:
                self.queue.retire()
            except redis.RedisError as exc:
                log.warning("could not deregister: %s", exc)

    def stop(self) -> None:
        self.stopping.set()

    def _beat(self) -> None:
        with self._held_lock:
            busy = sum(self._held.values())
        self.queue.heartbeat(**{Heartbeat.READY: "1" if self.models else "0",
                                Heartbeat.REASON: self.not_ready_reason, Heartbeat.PID: os.getpid(),
                                Heartbeat.HOST: socket.gethostname(), Heartbeat.BUSY: busy},
                             **self.stats.fields())

    def _maintain(self) -> None:
        interval = self.cfg.worker.heartbeat
        # Beats on after a SIGTERM while consumers finish in-flight events: a silent worker
        # would have them requeued by others and run twice.
        while not self._consumers_done.is_set():
            try:
                self._beat()
                if self.models:
                    self._requeue_orphans()
                    moved = self.queue.reap()
                    if moved:
                        log.warning("requeued %d events of dead workers", moved)
                    for task_id in self.tasks.expire_overdue():
                        log.warning("task %s expired", task_id)
            except redis.RedisError as exc:
                log.warning("maintenance: Redis unavailable: %s", exc)
            self._consumers_done.wait(interval)

    def _requeue_orphans(self) -> None:
        """Requeue what sits in our in-flight list unheld at two beats in a row.

        Redis can stop right after it moved an event there and before its answer reaches us:
        the consumer retries and takes the next one, and the event would wait, unseen, until
        this worker restarts (a CI run's outage test lost one that way).  Two beats keep a
        claim whose answer is still on its way from looking orphaned.
        """
        listed = self.queue.in_flight()
        with self._held_lock:
            unheld = {item for item in listed if not self._held[item]}
        for item in unheld & self._unheld_before:
            self.queue.give_back(unwrap(item), "claimed, but Redis lost the answer to the claim")
            log.warning("requeued an event in our in-flight list that no consumer held")
        self._unheld_before = unheld - self._unheld_before

    # -- consuming ----------------------------------------------------------------------------
    def _consume(self, burst: bool) -> None:
        backoff = 0.1
        while not self.stopping.is_set():
            try:
                delivery = self.queue.take(timeout=0.5 if burst else 1.0)
            except redis.RedisError as exc:
                log.warning("cannot take events: %s", exc)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, self.cfg.worker.retry_max_wait)
                continue
            backoff = 0.1
            if delivery is None:
                if burst:
                    return
                continue
            with self._held_lock:
                self._held[delivery.item] += 1
            try:
                self.process(delivery)
            except Exception as exc:  # noqa: BLE001 - e.g. Redis gone past all retries: keep the worker alive
                log.exception("could not settle an event (delivery %d)", delivery.attempt)
                self._hand_back(delivery, f"{type(exc).__name__}: {exc}")
            finally:
                with self._held_lock:
                    self._held[delivery.item] -= 1
                    if not self._held[delivery.item]:
                        del self._held[delivery.item]

    def _hand_back(self, delivery: Delivery, error: str) -> None:
        """Requeue an event we could not settle, with its delivery count and why (see process).

        Our heartbeat keeps the reaper off it meanwhile.
        """
        delay = 0.5
        while True:
            try:
                self.queue.give_back(delivery, error)
                return
            except redis.RedisError as exc:
                if self.stopping.is_set():
                    # stays in our in-flight list: the reaper, or our next start, requeues it
                    log.warning("event left in flight at shutdown: %s", exc)
                    return
                self.stopping.wait(delay)
                delay = min(delay * 2, self.cfg.worker.retry_max_wait)

    def process(self, delivery: Delivery) -> None:
        """Process one list item; it leaves our in-flight list only once its tasks are settled."""
        if delivery.attempt > self.cfg.worker.max_deliveries:
            # the one bound on redelivery: hand-backs and the reaper's requeues all count up
            done = delivery.attempt - 1
            log.error("giving up after %d deliveries: %s", done, delivery.last_error)
            self._retrying(self.queue.dead_letter, delivery,
                           f"gave up after {done} deliveries; last error: {delivery.last_error}", done)
            return
        try:
            events = parse_message(delivery.message)
        except PoisonEvent as exc:
            log.error("poison event dead-lettered: %s", exc)
            self._retrying(self.queue.dead_letter, delivery, f"poison event: {exc}")
            return
        dead = []
        for event in events:
            untrusted = self.untrusted(event)
            outcome = Outcome(Fate.DEAD, untrusted) if untrusted else self.process_event(event)
            if outcome.fate is Fate.DEAD:
                dead.append(outcome.reason)
        if dead:
            self._retrying(self.queue.dead_letter, delivery, "; ".join(dead))
        else:
            self._retrying(self.queue.ack, delivery)

    def untrusted(self, event: ObjectCreated) -> str | None:
        """Why an event MinIO would never send us must not reach a handler, or None."""
        if event.bucket != self.cfg.minio.bucket:
            return f"{event.key}: event for bucket {event.bucket!r}, not {self.cfg.minio.bucket!r}"
        if not event.key.startswith(INPUT_PREFIX) or ".." in event.key.split("/"):
            return f"{event.key}: key outside {INPUT_PREFIX}"
        return None

    def process_event(self, event: ObjectCreated) -> Outcome:
        """Claim the event's task and run the handler on it."""
        if event.key.endswith("/"):
            log.info("%s is a folder marker, not an image: skipped", event.key)
            return Outcome(Fate.SKIPPED, "folder marker")
        task_id = (self._retrying(self.tasks.task_id_for_key, event.key)
                   or derive_task_id(event.bucket, event.key))
        # One claim id across retries: a retry after Redis lost the answer finds its own claim.
        decision, _attempt = self._retrying(self.tasks.begin, task_id, event.key, event.etag,
                                           event.sequencer, self.worker_id, self.queue.run_id,
                                           claim=uuid.uuid4().hex)
        if decision is not Decision.START:
            log.info("task %s (%s): %s, skipped", task_id, event.key, decision.value)
            if decision is Decision.EXHAUSTED:
                return Outcome(Fate.DEAD, f"task {task_id} gave up after repeated worker deaths")
            return Outcome(Fate.SKIPPED, decision.value)
        limit = self.cfg.task.max_upload_bytes
        if event.size > limit:
            # decided from the event alone: an oversized object is never downloaded
            return self._fail(task_id, event, None,
                              f"object of {event.size} bytes exceeds the limit of {limit} bytes")
        try:
            named = named_model(event.model, event.key, self.cfg.models.by_prefix)
        except UnknownModel as exc:
            return self._fail(task_id, event, None, str(exc))
        if (named or DEFAULT) not in self.models:
            return self._fail(task_id, event, None, f"this worker does not serve model {named!r}")
        return self._run_handler(task_id, event, named)

    def _run_handler(self, task_id: str, event: ObjectCreated, named: str) -> Outcome:
        """Run the handler with the task's model; `named` is '' when the task named none."""
        model = named or DEFAULT
        ctx = Context(task_id=task_id, objects=self.objects, model=self.models[model],
                      max_pixels=self.cfg.task.max_pixels)
        started = time.monotonic()
        try:
            result = self._retrying(handle_object_created, event, ctx)
        except ObjectChanged as exc:
            log.info("task %s (%s): superseded, nothing written: %s", task_id, event.key, exc)
            return Outcome(Fate.SUPERSEDED, str(exc))
        except (ImageRejected, ObjectMissing) as exc:
            return self._fail(task_id, event, started, str(exc))
        except Exception as exc:  # noqa: BLE001 - a failure of one task must not stop the worker
            if is_transient(exc):
                error = f"gave up after {self.cfg.worker.retry_attempts} attempts: {type(exc).__name__}: {exc}"
            else:
                log.exception("task %s (%s) failed unexpectedly", task_id, event.key)
                error = f"internal error: {type(exc).__name__}: {exc}"
            self._fail(task_id, event, started, error)
            return Outcome(Fate.DEAD, f"{event.key}: {error}")
        self._retrying(self.tasks.complete, task_id, event.sequencer, result.output_key, result.mask_key,
                       named, input_key=event.key)
        seconds = time.monotonic() - started
        self.stats.observe(seconds, ok=True)
        log.info("task %s (%s) completed by %s in %.0f ms", task_id, event.key, model, 1000 * seconds)
        return Outcome(Fate.COMPLETED)

    def _fail(self, task_id: str, event: ObjectCreated, started: float | None, error: str) -> Outcome:
        """Fail the task; `started` is when the handler started, None if it never ran."""
        self._retrying(self.tasks.fail, task_id, event.sequencer, error, input_key=event.key)
        self.stats.observe(0.0 if started is None else time.monotonic() - started, ok=False)
        log.warning("task %s (%s) failed: %s", task_id, event.key, error)
        return Outcome(Fate.FAILED, error)


def build_worker(cfg: Config, worker_id: str, r: redis.Redis,
                 load_models: Callable[[], Mapping[str, Model]]) -> Worker:
    """A worker with its real parts: the queue and task store share one Redis client."""
    return Worker(cfg, EventQueue(r, cfg, worker_id), TaskStore(r, cfg), ObjectStore(cfg), load_models)


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
