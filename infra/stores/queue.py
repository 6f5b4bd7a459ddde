"""The event queue MinIO writes to, and the bookkeeping that makes consumption at-least-once.

Pattern: reliable queue with per-worker in-flight lists (Redis' documented RPOPLPUSH/LMOVE
pattern, as rq and kombu use it).  MinIO RPUSHes to `queue.events_key` and checks that the key
is a plain list, so the queue must stay one; a Stream would need a second hop.  A worker
atomically moves an event into its own in-flight list (LMOVE), and removes it only after the
task state is settled.  Each worker refreshes a heartbeat (infra/stores/workers.py); a reaper,
run by every live worker (functions/liveness.py), moves the in-flight events of workers whose
heartbeat expired back onto the events list, so an event taken by a worker that is SIGKILLed
or loses power is processed again by another one.  Redelivery means duplicates are possible:
task transitions are idempotent (see infra/stores/tasks.py).

Redelivery is counted.  A message handed back after a failure, or requeued by the reaper,
goes back with a one-line header in front of MinIO's bytes (kept verbatim: they need not even
be UTF-8)::

    #maskflow-redelivery {"deliveries": 2, "last_error": "..."}<LF><MinIO's message>

Only this module writes or reads that header; `take` returns the message and its attempt
number, and the worker dead-letters a message once it has had `worker.max_deliveries`.
Dead letters keep the reason, the first 64 KiB of the message and its delivery count; the
list is trimmed to `queue.dead_letter_max`.

MinIO sends every event twice, through its fast and its durable target (minio-notify.json),
as the same bytes.  A take from the events list while events wait notes the SHA-1 of each
message it takes for TWIN_WINDOW_S and drops a message noted already, in the same script: the
twin costs no delivery.  A twin that gets past it (its first copy was taken by BLMOVE, when
the list was empty, or came longer ago) is refused at its task's claim, as any duplicate.

Key names are in infra/stores/keys.py.
"""
from __future__ import annotations

import json
import time

import redis

from maskflow.infra.stores.keys import DEAD_LETTER_KEY, TAKEN_KEY, inflight_key, model_queue_key
from maskflow.infra.stores.source import Delivery
from maskflow.infra.wiring.config import Config

# '#' never starts JSON, so a message MinIO wrote is never mistaken for a redelivery.
REDELIVERY_MARK = b"#maskflow-redelivery "
DEAD_PAYLOAD_BYTES = 64 * 1024
# Seconds a take blocks on the events list while models' lists may fill (a poll of them each round).
MODEL_QUEUE_ROUND = 0.25
MAX_REASON_CHARS = 4000

# Requeue a dead worker's in-flight messages, each with its delivery count + 1, atomically.
# KEYS: in-flight list, events list. ARGV: REDELIVERY_MARK, why the delivery did not settle.
_REQUEUE = """
local mark, moved = ARGV[1], 0
while true do
  local item = redis.call('RPOP', KEYS[1])
  if not item then return moved end
  local deliveries, message = 0, item
  if string.sub(item, 1, #mark) == mark then
    local newline = string.find(item, '\\n', #mark + 1, true)
    if newline then
      local ok, meta = pcall(cjson.decode, string.sub(item, #mark + 1, newline - 1))
      if ok and type(meta) == 'table' and type(meta.deliveries) == 'number' then
        deliveries, message = meta.deliveries, string.sub(item, newline + 1)
      end
    end
  end
  local header = cjson.encode({deliveries = deliveries + 1, last_error = ARGV[2]})
  redis.call('LPUSH', KEYS[2], mark .. header .. '\\n' .. message)
  moved = moved + 1
end
"""

# Seconds a taken message is noted to know its twin: MinIO's durable target sends its copy at
# its next replay, every 3 s (unless Redis was away, and then the fast copy never came).
TWIN_WINDOW_S = 120
# At most this many twins dropped per take, to bound the script's time.
MAX_TWINS_PER_TAKE = 100

# Move the head of the first non-empty list of KEYS[3...] to the tail of the in-flight list
# KEYS[1]: a take in one round trip while events wait, however many lists a worker serves.
# From the events list (ARGV[3]) a message MinIO wrote is noted in the sorted set KEYS[2] (its
# SHA-1 -> ARGV[1], now) for ARGV[2] seconds, and a message noted already, its twin, is dropped.
# A redelivery ('#' header) is no twin, and a model's list holds messages noted when first taken.
_TAKE_FIRST = """
local now, dropped = tonumber(ARGV[1]), 0
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]))
for i = 3, #KEYS do
  while dropped < tonumber(ARGV[4]) do
    local item = redis.call('LPOP', KEYS[i])
    if not item then break end
    if KEYS[i] ~= ARGV[3] or string.sub(item, 1, 1) == '#'
        or redis.call('ZADD', KEYS[2], 'NX', now, redis.sha1hex(item)) == 1 then
      redis.call('RPUSH', KEYS[1], item)
      return item
    end
    dropped = dropped + 1
  end
end
return false
"""

# Move one item (ARGV[1]) out of an in-flight list (KEYS[1]) as new values (ARGV[3...]) onto a
# list (KEYS[2]), trimmed to ARGV[2] items if > 0; only if the item was still there, so that a
# retry after Redis lost the answer, or after the reaper took the item, queues nothing twice.
_SETTLE = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], unpack(ARGV, 3))
local keep = tonumber(ARGV[2])
if keep > 0 then redis.call('LTRIM', KEYS[2], -keep, -1) end
return 1
"""


def wrap(message: bytes, deliveries: int, last_error: str) -> bytes:
    header = json.dumps({"deliveries": deliveries, "last_error": last_error[:MAX_REASON_CHARS]})
    return REDELIVERY_MARK + header.encode() + b"\n" + message  # ensure_ascii: no raw newline


def unwrap(item: bytes) -> Delivery:
    if item.startswith(REDELIVERY_MARK):
        header, newline, message = item[len(REDELIVERY_MARK):].partition(b"\n")
        try:
            meta = json.loads(header) if newline else None
        except (ValueError, RecursionError):
            meta = None
        if isinstance(meta, dict):
            count, error = meta.get("deliveries"), meta.get("last_error", "")
            if type(count) is int and count >= 0 and isinstance(error, str):
                return Delivery(item, message, count + 1, error)
    # MinIO's own message, or a header we never wrote: parsing decides what it is
    return Delivery(item, item, 1)


def dead_letter_count(r: redis.Redis) -> int:
    return int(r.llen(DEAD_LETTER_KEY))


class RedisListSource:
    """The events list MinIO writes, consumed through this worker's in-flight list.

    Implements EventSource and Leases (infra/stores/source.py); a delivery's receipt is the
    list item as stored.
    """
    format = "minio-access"

    def __init__(self, r: redis.Redis, cfg: Config, worker_id: str):
        self.r = r
        self.events_key = cfg.queue.events_key
        self.worker_id = worker_id
        self.inflight = inflight_key(worker_id)
        self.dead_letter_max = cfg.queue.dead_letter_max
        self.model_queues: list[str] = []
        self.shared = True  # takes from the events list too, not only from the models' lists
        self._requeue = r.register_script(_REQUEUE)
        self._settle = r.register_script(_SETTLE)
        self._take_first = r.register_script(_TAKE_FIRST)

    # -- consuming ---------------------------------------------------------------------------
    def take(self, timeout: float) -> Delivery | None:
        """Block up to `timeout` s for the next event; it stays in our in-flight list until acked.

        The caller must check `attempt` against `worker.max_deliveries`: requeues count up.
        """
        lists = self.model_queues if self.shared else self.model_queues[1:]  # filled by other pools
        blocking = self.events_key if self.shared else self.model_queues[0]
        item = self._take_first(keys=[self.inflight, TAKEN_KEY, *lists, blocking],
                                args=[time.time(), TWIN_WINDOW_S, self.events_key, MAX_TWINS_PER_TAKE])
        if item is not None:
            return unwrap(item)
        # Blocking on one list, the others wait their turn: at most ROUND seconds.
        wait = min(timeout, MODEL_QUEUE_ROUND) if lists else timeout
        item = self.r.blmove(blocking, self.inflight, wait, "LEFT", "RIGHT")
        return None if item is None else unwrap(item)

    def ack(self, delivery: Delivery) -> None:
        self.r.lrem(self.inflight, 1, delivery.receipt)

    def give_back(self, delivery: Delivery, error: str) -> None:
        """Requeue a message we could not settle, counting this delivery and saying why.

        It goes to the tail, so a message that keeps failing does not hold up the others.
        """
        self._settle(keys=[self.inflight, self.events_key],
                     args=[delivery.receipt, 0, wrap(delivery.message, delivery.attempt, error)])

    def dead_letter(self, delivery: Delivery, reason: str, deliveries: int | None = None) -> None:
        """Set the message aside for good; `deliveries` defaults to this delivery's attempt."""
        message = delivery.message
        record = json.dumps({
            "reason": reason[:MAX_REASON_CHARS], "at": time.time(), "worker": self.worker_id,
            "deliveries": delivery.attempt if deliveries is None else deliveries,
            "size": len(message), "truncated": len(message) > DEAD_PAYLOAD_BYTES,
            "payload": message[:DEAD_PAYLOAD_BYTES].decode("utf-8", "replace")})
        self._settle(keys=[self.inflight, DEAD_LETTER_KEY],
                     args=[delivery.receipt, self.dead_letter_max, record])

    # -- pools -------------------------------------------------------------------------------
    def serve(self, models: tuple[str, ...], shared: bool = True) -> None:
        if not (models or shared):
            raise ValueError("a worker that takes nothing from the events list must serve a model")
        self.model_queues = [model_queue_key(self.events_key, m) for m in models]
        self.shared = shared

    def route(self, delivery: Delivery, model: str) -> None:
        """Move a message for a model we do not serve onto that model's own list, as it came."""
        self._settle(keys=[self.inflight, model_queue_key(self.events_key, model)],
                     args=[delivery.receipt, 0, delivery.receipt])

    def split(self, delivery: Delivery, messages: list[bytes]) -> None:
        """Replace a message by several (one per record) at the events list's tail."""
        self._settle(keys=[self.inflight, self.events_key], args=[delivery.receipt, 0, *messages])

    # -- leases ------------------------------------------------------------------------------
    def in_flight(self) -> list[Delivery]:
        """Our in-flight list as Redis holds it."""
        return [unwrap(item) for item in self.r.lrange(self.inflight, 0, -1)]

    def reclaim(self, worker_id: str, why: str) -> int:
        """Requeue `worker_id`'s in-flight events, each with its delivery count + 1."""
        # One script: a crash or a second reaper never sees an event in both lists, or uncounted.
        return int(self._requeue(keys=[inflight_key(worker_id), self.events_key],
                                 args=[REDELIVERY_MARK, why]))
