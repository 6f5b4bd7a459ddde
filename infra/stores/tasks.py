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
import logging
import threading
import time
import uuid
from dataclasses import dataclass

import redis

from maskflow.infra.domain.clock import utc_iso
from maskflow.infra.wiring.config import Config
from maskflow.infra.stores.keys import (PROCESSING_DEADLINES, STATS_KEY, UPLOAD_DEADLINES, Heartbeat, batch_failed_key,
                                 batch_key, heartbeat_key, index_key, task_channel, task_key)

log = logging.getLogger(__name__)

STATUSES = ("pending", "processing", "completed", "failed")
TERMINAL = ("completed", "failed")


class Decision(enum.StrEnum):
    """What `TaskStore.begin` decided about one event's version of a task (compares equal to its value)."""
    START = "start"          # claimed: process it
    DUPLICATE = "duplicate"  # this version is already finished
    STALE = "stale"          # a newer version is known
    BUSY = "busy"            # a live process is working on this version
    EXHAUSTED = "exhausted"  # its workers died too often: the task is now failed


def batch_prefixes(input_key: str) -> list[str]:
    """Every directory prefix of the key below the top level: input/b/c/x.jpg -> input/b/, input/b/c/."""
    parts = input_key.split("/")[:-1]
    return ["/".join(parts[:i]) + "/" for i in range(2, len(parts) + 1)]


def _script_keys(task_id: str, input_key: str, *extra: str) -> list[str]:
    """KEYS for the scripts below, in the order _LIB describes."""
    keys = [task_key(task_id), index_key(input_key), STATS_KEY, PROCESSING_DEADLINES,
            UPLOAD_DEADLINES, *extra]
    for prefix in batch_prefixes(input_key):
        keys += [batch_key(prefix), batch_failed_key(prefix)]
    return keys


def new_task_id() -> str:
    return uuid.uuid4().hex


def derive_task_id(bucket: str, input_key: str) -> str:
    """Tasks of directly uploaded objects: one id per bucket and key, whatever the event."""
    return hashlib.sha256(f"{bucket}/{input_key}".encode()).hexdigest()[:32]


def normalise_sequencer(sequencer: str) -> str:
    """Fixed-width hex so versions compare as strings inside Lua."""
    return sequencer.strip().lower().rjust(32, "0") if sequencer else ""


# KEYS of every task script: 1 the task hash, 2 its key index, 3 the status counts, 4 the
# processing deadlines, 5 the upload deadlines, (6 in `begin`: the heartbeat of the worker that
# claimed the task), then from FIRST_BATCH on, for each batch prefix of the input key, its
# counts hash and its failed-keys set.  Python computes them from the input key it read; a
# script refuses to run (`keyed_by`) if the record turns out to belong to another key.
# The record keeps its prefixes in 'batches' as well, for workers that still read them there.
_LIB = """
local function move(input_key, old, new, now, ttl)
  if old == new then return end
  if old ~= '' then redis.call('HINCRBY', KEYS[3], old, -1) end
  if new ~= '' then redis.call('HINCRBY', KEYS[3], new, 1) end
  for i = FIRST_BATCH, #KEYS, 2 do
    if old ~= '' then redis.call('HINCRBY', KEYS[i], old, -1) end
    if new ~= '' then redis.call('HINCRBY', KEYS[i], new, 1) end
    if new == 'failed' then redis.call('ZADD', KEYS[i + 1], now, input_key)
    elseif old == 'failed' then redis.call('ZREM', KEYS[i + 1], input_key) end
    redis.call('EXPIRE', KEYS[i], ttl)
    redis.call('EXPIRE', KEYS[i + 1], ttl)
  end
end
local function create(id, input_key, batches, now_iso, ttl)
  redis.call('HSET', KEYS[1], 'task_id', id, 'input_key', input_key, 'status', '',
             'created_at', now_iso, 'attempts', 0, 'batches', batches)
  redis.call('SET', KEYS[2], id, 'EX', ttl)
  for i = FIRST_BATCH, #KEYS, 2 do redis.call('HINCRBY', KEYS[i], 'total', 1) end
end
local function touch(ttl)
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
end
local function keyed_by(input_key)
  local stored = redis.call('HGET', KEYS[1], 'input_key')
  return not stored or stored == input_key
end
"""


def _script(first_batch: int, body: str) -> str:
    return f"local FIRST_BATCH = {first_batch}\n" + _LIB + body


# ARGV: id, input_key, batches, now_iso, now, ttl, upload_deadline (0 = none)
# Returns the record (HGETALL), new or not.
_CREATE = _script(6, """
if redis.call('EXISTS', KEYS[1]) == 0 then
  create(ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[6]))
  redis.call('HSET', KEYS[1], 'status', 'pending')
  move(ARGV[2], '', 'pending', tonumber(ARGV[5]), tonumber(ARGV[6]))
  if tonumber(ARGV[7]) > 0 then redis.call('ZADD', KEYS[5], ARGV[7], ARGV[1]) end
  touch(tonumber(ARGV[6]))
end
return redis.call('HGETALL', KEYS[1])
""")

# ARGV: id, input_key, batches, now_iso, now, ttl, etag, sequencer, worker, processing_deadline,
#       max_attempts, run (the claiming process' run id), claimant (the worker whose heartbeat
#       is KEYS[6]), channel, claim (the caller's id for this one claim, '' for none)
# Returns {decision, attempts}, or {'retry', 0} when the record changed since KEYS were computed.
_BEGIN = _script(7, """
local task = KEYS[1]
local now, ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
local seq, worker = ARGV[8], ARGV[9]
if not keyed_by(ARGV[2]) then return {'retry', 0} end
if redis.call('EXISTS', task) == 0 then
  create(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ttl)
end
local status = redis.call('HGET', task, 'status')
local known = redis.call('HGET', task, 'sequencer') or ''
local attempts = tonumber(redis.call('HGET', task, 'attempts') or '0')
if known ~= '' and seq ~= '' and seq < known then return {'stale', attempts} end
if known ~= '' and seq == known then
  if status == 'completed' or status == 'failed' then return {'duplicate', attempts} end
  if status == 'processing' then
    -- our own claim, whose answer was lost (Redis stopping as it replied): started already
    if ARGV[15] ~= '' and redis.call('HGET', task, 'claim') == ARGV[15] then
      return {'start', attempts}
    end
    -- busy only while the very process (worker id + run) that claimed it is alive
    if (redis.call('HGET', task, 'worker') or '') ~= ARGV[13] then return {'retry', 0} end
    local owner_run = redis.call('HGET', task, 'run') or ''
    local live_run = redis.call('HGET', KEYS[6], '""" + Heartbeat.RUN + """')
    local deadline = tonumber(redis.call('ZSCORE', KEYS[4], ARGV[1]) or '0')
    if live_run and live_run == owner_run and deadline > now then
      return {'busy', attempts}
    end
  end
  attempts = attempts + 1
else
  attempts = 1
  redis.call('HDEL', task, 'error', 'output_key', 'mask_key', 'model', 'completed_at')
end
redis.call('HSET', task, 'etag', ARGV[7], 'sequencer', seq, 'worker', worker, 'run', ARGV[12],
           'claim', ARGV[15], 'started_at', ARGV[4], 'attempts', attempts)
if attempts > tonumber(ARGV[11]) then
  redis.call('HSET', task, 'status', 'failed', 'completed_at', ARGV[4],
             'error', 'gave up after ' .. (attempts - 1) .. ' attempts (the worker died or timed out each time)')
  move(ARGV[2], status, 'failed', now, ttl)
  redis.call('ZREM', KEYS[4], ARGV[1])
  touch(ttl)
  redis.call('PUBLISH', ARGV[14], 'failed')
  return {'exhausted', attempts}
end
redis.call('HSET', task, 'status', 'processing')
move(ARGV[2], status, 'processing', now, ttl)
redis.call('ZADD', KEYS[4], ARGV[10], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
touch(ttl)
redis.call('PUBLISH', ARGV[14], 'processing')
return {'start', attempts}
""")

# ARGV: id, sequencer ('*' = any version), new_status, now_iso, now, ttl, required_status,
#       input_key, channel, then field/value pairs
# Returns 1 done, 0 refused, -1 when the record changed since KEYS were computed.
_FINISH = _script(6, """
local task = KEYS[1]
local status = redis.call('HGET', task, 'status')
if not status or status ~= ARGV[7] then return 0 end
if not keyed_by(ARGV[8]) then return -1 end
if ARGV[2] ~= '*' and (redis.call('HGET', task, 'sequencer') or '') ~= ARGV[2] then return 0 end
local new, now, ttl = ARGV[3], tonumber(ARGV[5]), tonumber(ARGV[6])
for i = 10, #ARGV, 2 do redis.call('HSET', task, ARGV[i], ARGV[i + 1]) end
redis.call('HSET', task, 'status', new)
if new == 'completed' or new == 'failed' then redis.call('HSET', task, 'completed_at', ARGV[4]) end
if new == 'completed' then redis.call('HDEL', task, 'error') end
move(ARGV[8], status, new, now, ttl)
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
touch(ttl)
redis.call('PUBLISH', ARGV[9], new)
return 1
""")


@dataclass(frozen=True)
class Task:
    task_id: str
    status: str
    input_key: str
    created_at: str
    attempts: int = 0
    etag: str = ""
    sequencer: str = ""
    output_key: str | None = None
    mask_key: str | None = None
    error: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    model: str | None = None  # the model that made the result, when the task named one

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


class ChangeFeed:
    """One subscription per process to every task's change channel, fanned out to waiters.

    A subscription per waiter would cost each long-poll a connection and a round trip, and
    hand the next request a closed pooled connection to reopen.  While the feed is down
    (Redis restarting), waiters miss wake-ups and fall back to re-reading the record.
    """

    def __init__(self, r: redis.Redis):
        self.r = r
        self.pattern = task_channel("*")
        self.prefix = len(self.pattern) - 1
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = {}
        self._thread: threading.Thread | None = None

    def watch(self, task_id: str) -> threading.Event:
        """An event set on the task's next change; hand it back with `unwatch`."""
        woken = threading.Event()
        with self._lock:
            self._waiters.setdefault(task_id, set()).add(woken)
            if self._thread is None:
                self._thread = threading.Thread(target=self._listen, name="task-changes", daemon=True)
                self._thread.start()
        self.subscribed.wait(1.0)  # only the first waiter, or one during an outage, waits here
        return woken

    def waiting(self) -> int:
        """Waiters right now: this process' long-polls."""
        with self._lock:
            return sum(len(waiters) for waiters in self._waiters.values())

    def unwatch(self, task_id: str, woken: threading.Event) -> None:
        with self._lock:
            waiters = self._waiters.get(task_id)
            if waiters is not None:
                waiters.discard(woken)
                if not waiters:
                    del self._waiters[task_id]

    def _listen(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self.r.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.psubscribe(self.pattern)
                pubsub.get_message(timeout=1.0)  # the confirmation: subscribed from here on
                self.subscribed.set()
                backoff = 0.1
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._wake(message["channel"].decode()[self.prefix:])
            except redis.RedisError as exc:
                log.warning("task change feed down, waiters re-read every second: %s", exc)
            finally:
                self.subscribed.clear()
                pubsub.close()
            time.sleep(backoff)  # before reconnecting to a Redis that just failed
            backoff = min(2 * backoff, 5.0)

    def _wake(self, task_id: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(task_id, ()))
        for woken in waiters:
            woken.set()


def _task_from(raw: dict[bytes, bytes]) -> Task | None:
    """A task hash as Redis returns it; None for none, or one still being created."""
    if not raw or not raw.get(b"status"):
        return None
    f = {k.decode(): v.decode() for k, v in raw.items()}
    return Task(task_id=f["task_id"], status=f["status"], input_key=f["input_key"],
                created_at=f["created_at"], attempts=int(f.get("attempts", 0)),
                etag=f.get("etag", ""), sequencer=f.get("sequencer", ""),
                output_key=f.get("output_key"), mask_key=f.get("mask_key"),
                error=f.get("error"), started_at=f.get("started_at"),
                completed_at=f.get("completed_at"), model=f.get("model"))


class TaskStore:
    def __init__(self, r: redis.Redis, cfg: Config):
        self.r = r
        self.ttl = cfg.task.retention
        self.timeout = cfg.task.timeout
        self.max_attempts = cfg.task.max_attempts
        self._create = r.register_script(_CREATE)
        self._begin = r.register_script(_BEGIN)
        self._finish = r.register_script(_FINISH)
        self.changes = ChangeFeed(r)

    # -- creating and reading ------------------------------------------------------------------
    def create_pending(self, task_id: str, input_key: str, upload_deadline: float = 0) -> Task:
        """A task the API announces before its object arrives (multipart or presigned upload)."""
        now = time.time()
        flat = self._create(keys=_script_keys(task_id, input_key),
                            args=[task_id, input_key, "\n".join(batch_prefixes(input_key)), utc_iso(now),
                                  now, self.ttl, upload_deadline])
        task = _task_from(dict(zip(flat[::2], flat[1::2])))
        assert task is not None
        return task

    def get(self, task_id: str) -> Task | None:
        return _task_from(self.r.hgetall(task_key(task_id)))
    def task_id_for_key(self, input_key: str) -> str | None:
        value = self.r.get(index_key(input_key))
        return value.decode() if value else None

    def find_by_key(self, input_key: str) -> Task | None:
        task_id = self.task_id_for_key(input_key)
        return self.get(task_id) if task_id else None

    # -- the worker's transitions --------------------------------------------------------------
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
                keys=_script_keys(task_id, key, heartbeat_key(claimant_id)),
                args=[task_id, key, "\n".join(batch_prefixes(key)), utc_iso(now), now, self.ttl,
                      etag, sequencer, worker_id, now + self.timeout, self.max_attempts, run_id,
                      claimant_id, task_channel(task_id), claim])
            if decision != b"retry":
                return Decision(decision.decode()), int(attempts)
            stored_key, claimant = self.r.hmget(task_key(task_id), "input_key", "worker")
            key = stored_key.decode() if stored_key else input_key
            claimant_id = claimant.decode() if claimant else ""

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
            done = int(self._finish(keys=_script_keys(task_id, key),
                                    args=[task_id, sequencer, new, utc_iso(now), now, self.ttl,
                                          required, key, task_channel(task_id), *pairs]))
            if done >= 0:
                return bool(done)
            key = ""  # changed since we read it, or a wrong guess: read it again

    def complete(self, task_id: str, sequencer: str, output_key: str, mask_key: str,
                 model: str = "", input_key: str = "") -> bool:
        """`model`: the name the task asked for; '' (the default model, unnamed) is not stored."""
        named = {"model": model} if model else {}
        return self._transition(task_id, normalise_sequencer(sequencer), "processing", "completed",
                                input_key, output_key=output_key, mask_key=mask_key, **named)

    def fail(self, task_id: str, sequencer: str, error: str, input_key: str = "") -> bool:
        return self._transition(task_id, normalise_sequencer(sequencer), "processing", "failed",
                                input_key, error=error)

    def fail_pending(self, task_id: str, error: str) -> bool:
        """An announced task whose upload failed before any event could exist."""
        return self._transition(task_id, "*", "pending", "failed", error=error)

    def expire_overdue(self, now: float | None = None) -> list[str]:
        """Fail tasks processing past task.timeout and announced uploads that never arrived."""
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
            if self._transition(task_id, "*", "pending", "failed", error="upload not received"):
                expired.append(task_id)
            else:
                self.r.zrem(UPLOAD_DEADLINES, task_id)
        return expired

    # -- summaries -----------------------------------------------------------------------------
    def status_counts(self) -> dict[str, int]:
        raw = self.r.hgetall(STATS_KEY)
        counts = {k.decode(): int(v) for k, v in raw.items()}
        return {s: counts.get(s, 0) for s in STATUSES}

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
