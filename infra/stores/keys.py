"""Every Redis key, pub/sub channel and heartbeat field name maskflow uses.

The one exception is the list MinIO writes events to: its name is configuration
(`queue.events_key`, default ``maskflow:events``) because MinIO's notification target must
name the same list.  Each model's own list, where workers that do not serve a model move its
events, is that name plus ``:<model>`` (`model_queue_key`).

Keys, with the code that writes them:

=====================================  ===========================================================
``<events_key>:<model>``               list: events for one model, moved there by workers that do
                                       not serve it; its pool's workers take them (queue.py)
``maskflow:inflight:<worker>``         list: events a worker has taken and not settled (queue.py)
``maskflow:workers``                   set: worker ids that have heartbeated (workers.py)
``maskflow:worker:<worker>``           hash with a TTL: a worker's heartbeat, fields below
``maskflow:dead``                      list: dead letters, JSON records (queue.py)
``maskflow:taken``                     sorted set: SHA-1 of each MinIO message taken from the
                                       events list -> when, for two minutes: its twin from
                                       MinIO's other target is dropped at take (queue.py)
``maskflow:task:<task_id>``            hash: one task; its fields are private to tasks.py
``maskflow:key:<input_key>``           string: the task id of an input key (tasks.py)
``maskflow:batch:<prefix>``            hash: task counts by status, plus ``total`` (tasks.py)
``maskflow:batch:<prefix>:failed``     sorted set: the prefix's failed input keys (tasks.py)
``maskflow:stats``                     hash: task counts by status, all tasks (tasks.py)
``maskflow:deadline:processing``       sorted set: task id -> when its processing times out
``maskflow:deadline:upload``           sorted set: task id -> when a pending task is late (its
                                       announced upload, or a worker for the model it waits for)
``maskflow:changed:<task_id>``         pub/sub channel: the task's new status (tasks.py)
``maskflow:results``                   stream: one entry per terminal transition, written by the
                                       transition's own script (task_scripts.py); read by
                                       consumer groups (docs/results.md)
``maskflow:webhooks:due``              sorted set: stream entry id -> when its next delivery
                                       attempt is due (infra/stores/results.py)
``maskflow:webhooks:attempts``         hash: stream entry id -> delivery attempts made so far
``maskflow:webhooks:stats``            hash: deliveries by outcome, latency histogram (/metrics)
=====================================  ===========================================================

Keys that are used together, and slots.  Every Lua script receives all the keys it touches
in KEYS[] (none is built inside a script), and each multi-key command or transaction names
its keys too, so Redis Cluster could route them.  What they touch together:

* taking an event (BLMOVE), handing it back, and the reaper's requeue: the events list and
  one in-flight list (a take by script also the models' lists and ``taken``); a move to a
  model's list: that list and one in-flight list; a dead letter: the dead-letter list and
  one in-flight list;
* a heartbeat and a clean exit: the workers set and that worker's heartbeat hash;
* every task transition (create, begin, finish): the task hash, its key index, its batch
  counters, the global status counts and both deadline sets, and ``begin`` also the heartbeat
  of the worker that claimed the task (to tell a live claim from an orphaned one); ``begin``
  and ``finish`` also the results stream, which a terminal transition appends to.

The task transitions are one script each so that a record, its counters and its deadline
never disagree, and they necessarily touch global keys (``stats``, the deadline sets) and
one batch hash per directory of the input key.  No per-task hash tag can put those in one
slot: the task hash is found by id, its index by input key, and the global keys are shared
by every task.  So on a Redis Cluster every maskflow key would need one hash tag, e.g. the
namespace ``{maskflow}`` and ``queue.events_key = "{maskflow}:events"``, which puts all of
maskflow on one shard: a cluster would buy failover, not write throughput.  On a single
Redis the names stay untagged and readable, as above.
"""
from __future__ import annotations

from collections.abc import Callable

NAMESPACE = "maskflow"

WORKERS_KEY = f"{NAMESPACE}:workers"
DEAD_LETTER_KEY = f"{NAMESPACE}:dead"
TAKEN_KEY = f"{NAMESPACE}:taken"
STATS_KEY = f"{NAMESPACE}:stats"
PROCESSING_DEADLINES = f"{NAMESPACE}:deadline:processing"
UPLOAD_DEADLINES = f"{NAMESPACE}:deadline:upload"
RESULTS_STREAM = f"{NAMESPACE}:results"
# The entries of the tasks with a callback_url, for the webhook dispatcher alone
WEBHOOKS_STREAM = f"{NAMESPACE}:webhooks:stream"
WEBHOOKS_DUE = f"{NAMESPACE}:webhooks:due"
WEBHOOK_ATTEMPTS = f"{NAMESPACE}:webhooks:attempts"
WEBHOOK_STATS = f"{NAMESPACE}:webhooks:stats"


def _keyed(kind: str) -> Callable[[str], str]:
    return lambda name: f"{NAMESPACE}:{kind}:{name}"


inflight_key = _keyed("inflight")    # by worker id
heartbeat_key = _keyed("worker")     # by worker id
task_key = _keyed("task")            # by task id
index_key = _keyed("key")            # by input key
batch_key = _keyed("batch")          # by directory prefix of an input key
task_channel = _keyed("changed")     # by task id


def model_queue_key(events_key: str, model: str) -> str:
    return f"{events_key}:{model}"


def batch_failed_key(prefix: str) -> str:
    return f"{batch_key(prefix)}:failed"


class Heartbeat:
    """Fields of a worker's heartbeat hash, all strings.

    The worker writes them (infra/stores/workers.py, functions/liveness.py); the API's /metrics, the
    stack's readiness probe and TaskStore.begin read them.
    """
    UPDATED = "updated"        # Unix time of the last beat
    RUN = "run"                # id of this run of the process: a restart with the same worker id differs
    READY = "ready"            # "1" once the model has loaded, else "0"
    REASON = "reason"          # why the worker is not ready, or ""
    PID = "pid"
    HOST = "host"
    BUSY = "busy"              # events being processed right now
    MODELS = "models"          # the models it serves, comma-separated
    PROCESSED = "processed"    # tasks completed since the worker started
    FAILED = "failed"          # tasks failed since the worker started
    DURATION_SUM = "duration_sum"      # seconds spent on those tasks
    DURATION_COUNT = "duration_count"  # processed + failed
    # + an upper bound in seconds ("0.5", "+Inf"): tasks that took at most that long (cumulative)
    DURATION_BUCKET = "duration_bucket_"
    # fields that describe the worker rather than count anything
    DESCRIPTIVE = (UPDATED, RUN, READY, REASON, PID, HOST, MODELS)
