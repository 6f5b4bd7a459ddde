"""Task records in Redis: atomic transitions, key -> task index, batch counters, retention.

One hash per task (key names: infra/stores/keys.py).  Every state change runs as one Lua script, so a
record, its batch counters and the processing deadline index always change together, and a
late or duplicate event can never move a finished task backwards:

* a task belongs to one input key; re-uploading the key starts a new *version* of the same
  task (MinIO's per-object ``sequencer`` orders versions, an older event is ``stale``);
* an event for the version already finished is a ``duplicate``;
* an event for a version another live worker is processing is ``busy``;
* finishing (completed / failed) only applies to the version being processed.

Batch counters: each directory prefix of an input key (``input/b1/``, ``input/b1/sub/``) has a
hash of counts by status plus ``total``, and a sorted set of its failed keys, so a batch of
10,000 files is summarised without a scan.  Records, indexes and counters expire after
``task.retention`` seconds of inactivity.
"""
from __future__ import annotations

import enum
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field

import redis

from maskflow.infra.domain.clock import utc_iso
from maskflow.infra.domain.outputs import RESULT_KINDS
from maskflow.infra.stores import task_scripts
from maskflow.infra.stores.changes import FINISHED_MAX_AGE_S, ChangeFeed, FinishedTasks
from maskflow.infra.stores.keys import (PROCESSING_DEADLINES, RESULTS_STREAM, STATS_KEY, UPLOAD_DEADLINES,
                                        WEBHOOKS_STREAM, batch_failed_key, batch_key, heartbeat_key, index_key,
                                        task_channel, task_key)
from maskflow.infra.stores.task_scripts import CALLBACK_FIELDS, batch_prefixes, script_keys
from maskflow.infra.wiring.config import Config

RESULT_FIELDS = tuple(kind.task_field for kind in RESULT_KINDS)
CLEARED_FIELDS = (*RESULT_FIELDS, *CALLBACK_FIELDS)  # a new version of a task starts without them

STATUSES = ("pending", "processing", "completed", "failed")
TERMINAL = ("completed", "failed")


class Decision(enum.StrEnum):
    """What `TaskStore.begin` decided about one event's version of a task (compares equal to its value)."""
    START = "start"          # claimed: process it
    DUPLICATE = "duplicate"  # this version is already finished
    STALE = "stale"          # a newer version is known
    BUSY = "busy"            # a live process is working on this version
    EXHAUSTED = "exhausted"  # its workers died too often: the task is now failed


def new_task_id() -> str:
    return uuid.uuid4().hex


def derive_task_id(bucket: str, input_key: str) -> str:
    """Tasks of directly uploaded objects: one id per bucket and key, whatever the event."""
    return hashlib.sha256(f"{bucket}/{input_key}".encode()).hexdigest()[:32]


def normalise_sequencer(sequencer: str) -> str:
    """Fixed-width hex so versions compare as strings inside Lua."""
    return sequencer.strip().lower().rjust(32, "0") if sequencer else ""


@dataclass(frozen=True)
class Task:
    task_id: str
    status: str
    input_key: str
    created_at: str
    attempts: int = 0
    etag: str = ""
    sequencer: str = ""
    results: dict[str, str] = field(default_factory=dict)  # result kind name -> key, once completed
    error: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    model: str | None = None  # the model that made the result, when the task named one
    options: dict[str, str] = field(default_factory=dict)  # the options it asked for, once completed
    callback_url: str = ""
    callback: dict | None = None  # the webhook's outcome once tried: status, attempts, last_error

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class BatchSummary:
    prefix: str
    total: int
    counts: dict[str, int]
    failures: list[Task]

    @property
    def done(self) -> int:
        return self.counts.get("completed", 0) + self.counts.get("failed", 0)


def _task_from(raw: dict[bytes, bytes]) -> Task | None:
    """A task hash as Redis returns it; None for none, or one still being created."""
    if not raw or not raw.get(b"status"):
        return None
    f = {k.decode(): v.decode() for k, v in raw.items()}
    return Task(task_id=f["task_id"], status=f["status"], input_key=f["input_key"],
                created_at=f["created_at"], attempts=int(f.get("attempts", 0)),
                etag=f.get("etag", ""), sequencer=f.get("sequencer", ""),
                results={kind.name: f[kind.task_field] for kind in RESULT_KINDS if kind.task_field in f},
                error=f.get("error"), started_at=f.get("started_at"),
                completed_at=f.get("completed_at"), model=f.get("model"),
                options=json.loads(f["options"]) if "options" in f else {},
                callback_url=f.get("callback_url", ""),
                callback={"status": f["callback_status"], "attempts": int(f.get("callback_attempts") or 0),
                          "last_error": f.get("callback_error") or None} if "callback_status" in f else None)


def task_from_fields(fields: dict[str, str]) -> Task:
    """A task from a record's fields as text, e.g. a results stream entry's."""
    task = _task_from({k.encode(): v.encode() for k, v in fields.items()})
    assert task is not None, "a record without a status"
    return task


class TaskStore:
    def __init__(self, r: redis.Redis, cfg: Config):
        self.r = r
        self.ttl = cfg.task.retention
        self.timeout = cfg.task.timeout
        self.max_attempts = cfg.task.max_attempts
        self.stream_maxlen = cfg.results.stream_maxlen
        self._create = r.register_script(task_scripts.CREATE)
        self._begin = r.register_script(task_scripts.BEGIN)
        self._finish = r.register_script(task_scripts.FINISH)
        self._await = r.register_script(task_scripts.AWAIT)
        self._callback = r.register_script(task_scripts.CALLBACK)
        self.changes = ChangeFeed(r)
        self.finished: FinishedTasks | None = None  # see keep_finished

    # -- creating and reading ------------------------------------------------------------------
    def create_pending(self, task_id: str, input_key: str, upload_deadline: float = 0,
                       callback_url: str = "") -> Task:
        """A task the API announces before its object arrives (multipart or presigned upload);
        its callback_url, so that an upload that never arrives is reported too."""
        now = time.time()
        flat = self._create(keys=script_keys(task_id, input_key),
                            args=[task_id, input_key, "\n".join(batch_prefixes(input_key)), utc_iso(now),
                                  now, self.ttl, upload_deadline, callback_url])
        task = _task_from(dict(zip(flat[::2], flat[1::2])))
        assert task is not None
        return task

    def keep_finished(self, max_age: float = FINISHED_MAX_AGE_S) -> None:
        """Serve finished records from memory until they change (changes.FinishedTasks): an
        API process answers repeated lookups of a finished task without a round trip."""
        self.finished = FinishedTasks(self.changes, self._read, max_age)

    def get(self, task_id: str) -> Task | None:
        return self.finished.get(task_id) if self.finished is not None else self._read(task_id)

    def _read(self, task_id: str) -> Task | None:
        return _task_from(self.r.hgetall(task_key(task_id)))

    def task_id_for_key(self, input_key: str) -> str | None:
        value = self.r.get(index_key(input_key))
        return value.decode() if value else None

    def find_by_key(self, input_key: str) -> Task | None:
        task_id = self.task_id_for_key(input_key)
        return self.get(task_id) if task_id else None

    # -- the worker's transitions --------------------------------------------------------------
    def begin_event(self, bucket: str, input_key: str, etag: str, sequencer: str, worker_id: str,
                    run_id: str, claim: str = "") -> tuple[str, Decision, int]:
        """`begin` for an event's object: its task is the one the API announced for the key,
        else the one derived from bucket and key.  Returns the task id too."""
        task_id = self.task_id_for_key(input_key) or derive_task_id(bucket, input_key)
        return (task_id, *self.begin(task_id, input_key, etag, sequencer, worker_id, run_id, claim))

    def begin(self, task_id: str, input_key: str, etag: str, sequencer: str,
              worker_id: str, run_id: str, claim: str = "") -> tuple[Decision, int]:
        """Claim one version of a task for processing; returns the decision and the attempt.

        `run_id` names this process' run of `worker_id` (its heartbeat carries it), so a
        restarted worker with the same id does not look like the one that died mid-task.
        `claim`, unique per claim and the same when the call is retried, makes a retry after
        a lost answer START again instead of finding the task busy with its own claim.
        """
        sequencer = normalise_sequencer(sequencer)
        # First guess what is usual (the record is the event's key's and unclaimed), saving a
        # round trip; the script says 'retry' when the guess is wrong, and then we read.
        key, claimant_id = input_key, ""
        while True:
            now = time.time()
            decision, attempts = self._begin(
                keys=script_keys(task_id, key, heartbeat_key(claimant_id), RESULTS_STREAM, WEBHOOKS_STREAM),
                args=[task_id, key, "\n".join(batch_prefixes(key)), utc_iso(now), now, self.ttl,
                      etag, sequencer, worker_id, now + self.timeout, self.max_attempts, run_id,
                      claimant_id, task_channel(task_id), claim, self.stream_maxlen, *CLEARED_FIELDS])
            if decision != b"retry":
                return Decision(decision.decode()), int(attempts)
            stored_key, claimant = self.r.hmget(task_key(task_id), "input_key", "worker")
            key = stored_key.decode() if stored_key else input_key
            claimant_id = claimant.decode() if claimant else ""

    def await_model(self, bucket: str, input_key: str, sequencer: str, model: str) -> bool:
        """Mark the event's task as waiting for a worker of `model` (pending, failed by
        expire_overdue after task.timeout); False when the event's version is finished already."""
        task_id = self.task_id_for_key(input_key) or derive_task_id(bucket, input_key)
        sequencer, key = normalise_sequencer(sequencer), input_key
        while True:
            now = time.time()
            answer = self._await(keys=script_keys(task_id, key),
                                 args=[task_id, key, "\n".join(batch_prefixes(key)), utc_iso(now), now,
                                       self.ttl, sequencer, model, now + self.timeout, task_channel(task_id),
                                       *CLEARED_FIELDS])
            if answer != b"retry":
                return answer == b"waiting"
            stored = self.r.hget(task_key(task_id), "input_key")
            key = stored.decode() if stored else input_key

    def _transition(self, task_id: str, sequencer: str, required: str, new: str,
                    input_key: str = "", **fields: str) -> bool:
        """`input_key`: the task's key if the caller knows it, saving a read; the script
        refuses a wrong one and we read the record's."""
        pairs = [x for kv in fields.items() for x in kv]
        key = input_key
        while True:
            if not key:
                stored_key = self.r.hget(task_key(task_id), "input_key")
                if stored_key is None:
                    return False
                key = stored_key.decode()
            now = time.time()
            done = int(self._finish(keys=script_keys(task_id, key, RESULTS_STREAM, WEBHOOKS_STREAM),
                                    args=[task_id, sequencer, new, utc_iso(now), now, self.ttl,
                                          required, key, task_channel(task_id), self.stream_maxlen, *pairs]))
            if done >= 0:
                return bool(done)
            key = ""  # changed since we read it, or a wrong guess: read it again

    def complete(self, task_id: str, sequencer: str, results: dict[str, str],
                 model: str = "", input_key: str = "", options: dict[str, str] | None = None) -> bool:
        """`results`: each result kind's key, by kind name; `model`: the name the task asked
        for ('' is the default model, unnamed, and not stored); `options`: those it asked for
        beyond the defaults (none: not stored)."""
        named = {"model": model} if model else {}
        if options:
            named["options"] = json.dumps(options, sort_keys=True)
        fields = {kind.task_field: results[kind.name] for kind in RESULT_KINDS}
        return self._transition(task_id, normalise_sequencer(sequencer), "processing", "completed",
                                input_key, **fields, **named)

    def fail(self, task_id: str, sequencer: str, error: str, input_key: str = "") -> bool:
        return self._transition(task_id, normalise_sequencer(sequencer), "processing", "failed",
                                input_key, error=error)

    def fail_pending(self, task_id: str, error: str) -> bool:
        """An announced task whose upload failed before any event could exist."""
        return self._transition(task_id, "*", "pending", "failed", error=error)

    def set_callback(self, task_id: str, url: str) -> None:
        """The claimed version's callback_url (begin cleared the last version's)."""
        self.r.hset(task_key(task_id), "callback_url", url)

    def record_callback(self, task_id: str, sequencer: str, status: str, attempts: int, error: str) -> bool:
        """The webhook's outcome for that version of the task; False when a newer one exists."""
        return bool(self._callback(keys=[task_key(task_id)],
                                   args=[sequencer, status, attempts, error, task_channel(task_id)]))

    def expire_overdue(self, now: float | None = None) -> list[str]:
        """Fail tasks processing past task.timeout, announced uploads that never arrived, and
        tasks whose model no worker served in time."""
        now = time.time() if now is None else now
        expired = []
        for raw in self.r.zrangebyscore(PROCESSING_DEADLINES, "-inf", now):
            task_id = raw.decode()
            if self._transition(task_id, "*", "processing", "failed",
                                error=f"processing timed out after {self.timeout} s"):
                expired.append(task_id)
            else:
                self.r.zrem(PROCESSING_DEADLINES, task_id)
        for raw in self.r.zrangebyscore(UPLOAD_DEADLINES, "-inf", now):
            task_id = raw.decode()
            model = self.r.hget(task_key(task_id), "awaiting")
            error = (f"no worker served model {model.decode()!r} within {self.timeout} s: start one "
                     f"(worker.models) where the model is installed" if model else "upload not received")
            if self._transition(task_id, "*", "pending", "failed", error=error):
                expired.append(task_id)
            else:
                self.r.zrem(UPLOAD_DEADLINES, task_id)
        return expired

    # -- summaries -----------------------------------------------------------------------------
    def status_counts(self) -> dict[str, int]:
        raw = self.r.hgetall(STATS_KEY)
        counts = {k.decode(): int(v) for k, v in raw.items()}
        return {s: counts.get(s, 0) for s in STATUSES}

    def batch_counts(self, prefix: str) -> tuple[int, dict[str, int], str]:
        """A batch's total and counts by status (without its failures), and the results stream's
        newest id, read in one transaction: a transition's script moves the counts and appends
        its entry together, so these counts count no entry after that id ("0-0": none)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hgetall(batch_key(prefix))
        pipe.xrevrange(RESULTS_STREAM, count=1)
        raw, newest = pipe.execute()
        counts = {k.decode(): int(v) for k, v in raw.items()}
        total = counts.pop("total", 0)
        return total, {s: counts.get(s, 0) for s in STATUSES}, newest[0][0].decode() if newest else "0-0"

    def batch(self, prefix: str, offset: int = 0, limit: int = 100) -> BatchSummary | None:
        raw = self.r.hgetall(batch_key(prefix))
        if not raw:
            return None
        counts = {k.decode(): int(v) for k, v in raw.items()}
        total = counts.pop("total", 0)
        failed_keys = self.r.zrange(batch_failed_key(prefix), offset, offset + limit - 1)
        failures = [t for t in (self.find_by_key(k.decode()) for k in failed_keys) if t]
        return BatchSummary(prefix, total, {s: counts.get(s, 0) for s in STATUSES}, failures)

    def wait_for_terminal(self, task_id: str, timeout: float) -> Task | None:
        """Block until the task is completed/failed or `timeout` passes (Redis pub/sub)."""
        deadline = time.monotonic() + timeout
        woken = self.changes.watch(task_id)
        try:
            while True:
                woken.clear()
                task = self.get(task_id)  # read after watching, so no change is missed
                remaining = deadline - time.monotonic()
                if task is None or task.terminal or remaining <= 0:
                    return task
                woken.wait(min(remaining, 1.0))
        finally:
            self.changes.unwatch(task_id, woken)
