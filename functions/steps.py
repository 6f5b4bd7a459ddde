"""One delivery's way through a worker, a function per step, in this order:

    take -> parse -> trust -> route -> claim -> run -> publish -> settle

`consume` is a consumer thread: take, then `process`, which is every step after take.

* take: the next delivery from the event source, or from the own list of a model served
  here; it stays taken until settled.
* parse: its bytes become typed events, by the source's format (functions/events.py).
* trust: refuse what MinIO would never send us (another bucket, a key outside input/).
* route: an event for a model this worker does not serve (`worker.models`) moves, atomically,
  to that model's own list, where its pool's workers take it; its task waits there, pending,
  and fails at `task.timeout` if no worker serves the model.
* claim: this event's version of its task, atomically and never backwards (a duplicate or
  stale event stops here); then what can be refused without a download: an object larger
  than `task.max_upload_bytes` by its event's size, a model nobody serves.
* run: the handler, with the task's model (functions/handlers.py).
* publish: the task's outcome, completed or failed with its reason, for the API and clients.
* settle: ack the delivery, or dead-letter it.

Every store call retries transient faults (S3 or Redis unreachable, timeouts, 5xx, SlowDown)
with backoff, `worker.retry_attempts` times: the stores are built with that policy
(functions/worker.py, infra/wiring/retries.py).  What becomes of everything else (poison,
untrusted events, rejected images, bugs, deliveries that cannot be settled, dead workers) is
docs/failure-policy.md; every path ends in a failed task with its reason or a dead letter.
"""
from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Hashable, Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field

from maskflow.functions.events import PARSERS, ObjectCreated, PoisonEvent
from maskflow.functions.handlers import Context, Model, handle_object_created
from maskflow.functions.liveness import Stats
from maskflow.infra.domain.catalog import DEFAULT, UnknownModel, named_model
from maskflow.infra.domain.formats import ImageRejected
from maskflow.infra.domain.options import DEFAULTS, BadOptions, Options, for_task
from maskflow.infra.domain.outputs import INPUT_PREFIX
from maskflow.infra.stores.objects import ObjectChanged, ObjectMissing, ObjectStore
from maskflow.infra.stores.source import Delivery, EventSource
from maskflow.infra.stores.tasks import Decision, TaskStore
from maskflow.infra.wiring.config import Config
from maskflow.infra.wiring.outbound import BadCallback, callback_for
from maskflow.infra.wiring.retries import is_transient

log = logging.getLogger("maskflow.worker")

class Holding:
    """The deliveries the consumers are working on right now, by receipt."""

    def __init__(self) -> None:
        self._held: Counter[Hashable] = Counter()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def holding(self, delivery: Delivery) -> Iterator[None]:
        with self._lock:
            self._held[delivery.receipt] += 1
        try:
            yield
        finally:
            with self._lock:
                self._held[delivery.receipt] -= 1
                if not self._held[delivery.receipt]:
                    del self._held[delivery.receipt]

    def snapshot(self) -> Counter[Hashable]:
        with self._lock:
            return self._held.copy()


@dataclass(frozen=True)
class Parts:
    """What the steps work with, built once per worker process (functions/worker.py)."""
    cfg: Config
    worker_id: str
    run_id: str  # tells this process from an earlier run of the same worker id
    source: EventSource
    tasks: TaskStore
    objects: ObjectStore
    models: Mapping[str, Model]  # by catalogue name
    stats: Stats
    writer: Executor  # the handler's background writes
    held: Holding = field(default_factory=Holding)


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


@dataclass(frozen=True)
class Claim:
    """A task claimed for one event; `refusal` says why it fails without running."""
    task_id: str
    event: ObjectCreated
    named: str  # the model the task names, '' for none (it gets the default)
    refusal: str = ""
    options: Options = DEFAULTS


@dataclass(frozen=True)
class Run:
    """What running the handler gave: the results' keys, or why there are none."""
    results: dict[str, str] | None = None
    error: str = ""
    superseded: bool = False
    dead: bool = False  # a transient fault past every retry or a bug: dead-letter the event too
    seconds: float = 0.0


def consume(parts: Parts, stopping: threading.Event, burst: bool = False) -> None:
    """One consumer thread: take, then process, until `stopping` (or, in burst mode, an empty queue)."""
    backoff = 0.1
    while not stopping.is_set():
        try:
            delivery = take(parts, timeout=0.5 if burst else 1.0)
        except Exception as exc:  # noqa: BLE001 - the source past all retries: wait, then again
            log.warning("cannot take events: %s: %s", type(exc).__name__, exc)
            stopping.wait(backoff)
            backoff = min(backoff * 2, parts.cfg.worker.retry_max_wait)
            continue
        backoff = 0.1
        if delivery is None:
            if burst:
                return
            continue
        with parts.held.holding(delivery):
            try:
                process(delivery, parts)
            except Exception as exc:  # noqa: BLE001 - e.g. Redis gone past all retries: keep the worker alive
                log.exception("could not settle an event (delivery %d)", delivery.attempt)
                hand_back(delivery, f"{type(exc).__name__}: {exc}", parts)


def process(delivery: Delivery, parts: Parts) -> None:
    """Everything after take, for one delivery; it is settled when this returns."""
    done = delivery.attempt - 1
    if done >= parts.cfg.worker.max_deliveries:
        # the one bound on redelivery: hand-backs and the reaper's requeues all count up
        log.error("giving up after %d deliveries: %s", done, delivery.last_error)
        parts.source.dead_letter(delivery, f"gave up after {done} deliveries; last error: "
                                           f"{delivery.last_error}", done)
        return
    events = parse(delivery, parts.source.format)
    if isinstance(events, Outcome):
        settle(delivery, [events], parts)
        return
    checked = [(event, trust(event, parts.cfg)) for event in events]
    if not any(untrusted for _event, untrusted in checked) and route(delivery, events, parts):
        return
    outcomes = []
    for event, untrusted in checked:
        if untrusted:
            outcomes.append(Outcome(Fate.DEAD, untrusted))
            continue
        claimed = claim(event, parts)
        if isinstance(claimed, Outcome):
            outcomes.append(claimed)
            continue
        result = Run(error=claimed.refusal) if claimed.refusal else run(claimed, parts)
        outcomes.append(publish(claimed, result, parts))
    settle(delivery, outcomes, parts)


def take(parts: Parts, timeout: float) -> Delivery | None:
    return parts.source.take(timeout)


def parse(delivery: Delivery, message_format: str) -> list[ObjectCreated] | Outcome:
    try:
        return PARSERS[message_format](delivery.message)
    except PoisonEvent as exc:
        log.error("poison event dead-lettered: %s", exc)
        return Outcome(Fate.DEAD, f"poison event: {exc}")


def trust(event: ObjectCreated, cfg: Config) -> str | None:
    """Why an event MinIO would never send us must not reach a handler, or None."""
    if event.bucket != cfg.minio.bucket:
        return f"{event.key}: event for bucket {event.bucket!r}, not {cfg.minio.bucket!r}"
    if not event.key.startswith(INPUT_PREFIX) or ".." in event.key.split("/"):
        return f"{event.key}: key outside {INPUT_PREFIX}"
    return None


def route(delivery: Delivery, events: list[ObjectCreated], parts: Parts) -> bool:
    """Send the delivery where its model is served, if not here; True when it has left."""
    foreign = {model for model in (model_of(event, parts.cfg) for event in events)
               if model and model not in parts.models}
    if not foreign:
        return False
    if len(events) > 1:  # MinIO writes one record a message; anyone else's are split first
        parts.source.split(delivery, [event.as_message() for event in events])
        return True
    (event,), (model,) = events, foreign
    if parts.tasks.await_model(event.bucket, event.key, event.sequencer, model):
        parts.source.route(delivery, model)
        log.info("%s: for model %s, served by another pool: moved to its list", event.key, model)
    else:
        parts.source.ack(delivery)  # that version is finished already: a duplicate
    return True


def model_of(event: ObjectCreated, cfg: Config) -> str:
    """The model the event's task needs; '' for a folder marker or a name the catalogue does
    not know (claim fails that task, saying so)."""
    if event.key.endswith("/"):
        return ""
    try:
        return named_model(event.model, event.key, cfg.models.by_prefix) or DEFAULT
    except UnknownModel:
        return ""


def claim(event: ObjectCreated, parts: Parts) -> Claim | Outcome:
    """Claim the event's task; an Outcome when there is nothing to run."""
    if event.key.endswith("/"):
        log.info("%s is a folder marker, not an image: skipped", event.key)
        return Outcome(Fate.SKIPPED, "folder marker")
    # One claim id across retries: a retry after Redis lost the answer finds its own claim.
    task_id, decision, _attempt = parts.tasks.begin_event(
        event.bucket, event.key, event.etag, event.sequencer, parts.worker_id, parts.run_id,
        claim=uuid.uuid4().hex)
    if decision is not Decision.START:
        log.info("task %s (%s): %s, skipped", task_id, event.key, decision.value)
        if decision is Decision.EXHAUSTED:
            return Outcome(Fate.DEAD, f"task {task_id} gave up after repeated worker deaths")
        return Outcome(Fate.SKIPPED, decision.value)
    try:
        callback = callback_for(event.callback_url, event.key, parts.cfg.webhook)
    except BadCallback as exc:
        return Claim(task_id, event, "", str(exc))  # failed with its reason, never silently dropped
    if callback:  # first: a task refused below reports to it too
        parts.tasks.set_callback(task_id, callback)
    limit = parts.cfg.task.max_upload_bytes
    if event.size > limit:
        # decided from the event alone: an oversized object is never downloaded
        return Claim(task_id, event, "", f"object of {event.size} bytes exceeds the limit of {limit} bytes")
    try:
        named = named_model(event.model, event.key, parts.cfg.models.by_prefix)
        options = for_task(event.options, event.key, parts.cfg.outputs.by_prefix)
    except (UnknownModel, BadOptions) as exc:
        return Claim(task_id, event, "", str(exc))
    if (named or DEFAULT) not in parts.models:
        return Claim(task_id, event, named, f"this worker does not serve model {named!r}")
    return Claim(task_id, event, named, options=options)


def run(claimed: Claim, parts: Parts) -> Run:
    """The handler, with the task's model."""
    event = claimed.event
    ctx = Context(task_id=claimed.task_id, objects=parts.objects,
                  model=parts.models[claimed.named or DEFAULT], options=claimed.options,
                  max_pixels=parts.cfg.task.max_pixels,
                  refine_max_pixels=parts.cfg.outputs.refine_max_pixels, writer=parts.writer)
    started = time.monotonic()
    try:
        results = handle_object_created(event, ctx)
    except ObjectChanged as exc:
        log.info("task %s (%s): superseded, nothing written: %s", claimed.task_id, event.key, exc)
        return Run(error=str(exc), superseded=True)
    except (ImageRejected, ObjectMissing) as exc:
        return Run(error=str(exc), seconds=time.monotonic() - started)
    except Exception as exc:  # noqa: BLE001 - a failure of one task must not stop the worker
        if is_transient(exc):
            error = f"gave up after {parts.cfg.worker.retry_attempts} attempts: {type(exc).__name__}: {exc}"
        else:
            log.exception("task %s (%s) failed unexpectedly", claimed.task_id, event.key)
            error = f"internal error: {type(exc).__name__}: {exc}"
        return Run(error=error, dead=True, seconds=time.monotonic() - started)
    return Run(results=results, seconds=time.monotonic() - started)


def publish(claimed: Claim, result: Run, parts: Parts) -> Outcome:
    """Record the task's outcome; its results are in the bucket already."""
    task_id, event = claimed.task_id, claimed.event
    if result.superseded:
        return Outcome(Fate.SUPERSEDED, result.error)  # the newer upload's event settles the task
    if result.results is not None:
        parts.tasks.complete(task_id, event.sequencer, result.results, claimed.named,
                             input_key=event.key, options=claimed.options.named)
        parts.stats.observe(result.seconds, ok=True)
        log.info("task %s (%s) completed by %s in %.0f ms", task_id, event.key,
                 claimed.named or DEFAULT, 1000 * result.seconds)
        return Outcome(Fate.COMPLETED)
    parts.tasks.fail(task_id, event.sequencer, result.error, input_key=event.key)
    parts.stats.observe(result.seconds, ok=False)
    log.warning("task %s (%s) failed: %s", task_id, event.key, result.error)
    if result.dead:
        return Outcome(Fate.DEAD, f"{event.key}: {result.error}")
    return Outcome(Fate.FAILED, result.error)


def settle(delivery: Delivery, outcomes: list[Outcome], parts: Parts) -> None:
    """Ack the delivery, or dead-letter it when any of its events must be."""
    dead = [o.reason for o in outcomes if o.fate is Fate.DEAD]
    if dead:
        parts.source.dead_letter(delivery, "; ".join(dead))
    else:
        parts.source.ack(delivery)


def hand_back(delivery: Delivery, error: str, parts: Parts) -> None:
    """Requeue a delivery we could not settle, with its delivery count and why.

    If even that fails, it stays taken, held by nobody: liveness requeues it (or, after a
    crash, a reaper or this worker's next start does).
    """
    try:
        parts.source.give_back(delivery, error)
    except Exception as exc:  # noqa: BLE001 - the source past all retries
        log.warning("event left in flight: %s: %s", type(exc).__name__, exc)
