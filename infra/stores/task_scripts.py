"""The task transitions as Lua scripts, and the KEYS each one is given.

Every state change of a task (infra/stores/tasks.py) runs as one of these scripts, so a record,
its batch counters and the processing deadline index always change together.  Every key a
script touches comes in KEYS[] (none is built inside a script; see infra/stores/keys.py).
"""
from __future__ import annotations

from maskflow.infra.domain.outputs import RESULT_KINDS
from maskflow.infra.stores.keys import (PROCESSING_DEADLINES, STATS_KEY, UPLOAD_DEADLINES, Heartbeat,
                                        batch_failed_key, batch_key, index_key, task_key)

# What a results stream entry holds: the record's fields that describe the outcome (not the
# claim's bookkeeping: worker, run, claim, batches).
STREAM_FIELDS = ("task_id", "status", "input_key", "etag", "sequencer", "error", "model", "options",
                 "created_at", "started_at", "completed_at", "attempts", "callback_url",
                 *(kind.task_field for kind in RESULT_KINDS))
# Cleared when a new version of a task starts, with its results: the last version's callback.
CALLBACK_FIELDS = ("callback_url", "callback_status", "callback_attempts", "callback_error")


def batch_prefixes(input_key: str) -> list[str]:
    """Every directory prefix of the key below the top level: input/b/c/x.jpg -> input/b/, input/b/c/."""
    parts = input_key.split("/")[:-1]
    return ["/".join(parts[:i]) + "/" for i in range(2, len(parts) + 1)]


def script_keys(task_id: str, input_key: str, *extra: str) -> list[str]:
    """KEYS for the scripts below, in the order _LIB describes."""
    keys = [task_key(task_id), index_key(input_key), STATS_KEY, PROCESSING_DEADLINES,
            UPLOAD_DEADLINES, *extra]
    for prefix in batch_prefixes(input_key):
        keys += [batch_key(prefix), batch_failed_key(prefix)]
    return keys


# KEYS of every task script: 1 the task hash, 2 its key index, 3 the status counts, 4 the
# processing deadlines, 5 the upload deadlines, (6 in `begin`: the heartbeat of the worker that
# claimed the task, 7 the results stream, 8 the webhooks stream; 6 and 7 in `finish`: the two
# streams), then from FIRST_BATCH on, for each batch prefix of the input key, its counts hash
# and its failed-keys set.  Python computes them from the input key it read; a
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
-- One stream entry for a terminal transition, in the same script, so that a task that
-- finished has its entry and a refused (duplicate, late) transition adds none.  A task with a
-- callback_url has the same entry in the webhooks stream too: the dispatcher reads only those.
local STREAM_FIELDS = {""" + ", ".join(f"'{name}'" for name in STREAM_FIELDS) + """}
local function emit(stream, webhooks, maxlen)
  if maxlen <= 0 then return end
  local values = redis.call('HMGET', KEYS[1], unpack(STREAM_FIELDS))
  local entry, callback = {}, false
  for i, name in ipairs(STREAM_FIELDS) do
    if values[i] then entry[#entry + 1] = name; entry[#entry + 1] = values[i] end
    if name == 'callback_url' and values[i] and values[i] ~= '' then callback = true end
  end
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(entry))
  if callback then redis.call('XADD', webhooks, 'MAXLEN', '~', maxlen, '*', unpack(entry)) end
end
local function keyed_by(input_key)
  local stored = redis.call('HGET', KEYS[1], 'input_key')
  return not stored or stored == input_key
end
"""


def _script(first_batch: int, body: str) -> str:
    return f"local FIRST_BATCH = {first_batch}\n" + _LIB + body


# ARGV: id, input_key, batches, now_iso, now, ttl, upload_deadline (0 = none), callback_url ('' = none)
# Returns the record (HGETALL), new or not.
CREATE = _script(6, """
if redis.call('EXISTS', KEYS[1]) == 0 then
  create(ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[6]))
  redis.call('HSET', KEYS[1], 'status', 'pending')
  move(ARGV[2], '', 'pending', tonumber(ARGV[5]), tonumber(ARGV[6]))
  if tonumber(ARGV[7]) > 0 then redis.call('ZADD', KEYS[5], ARGV[7], ARGV[1]) end
  if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'callback_url', ARGV[8]) end
  touch(tonumber(ARGV[6]))
end
return redis.call('HGETALL', KEYS[1])
""")

# ARGV: id, input_key, batches, now_iso, now, ttl, etag, sequencer, worker, processing_deadline,
#       max_attempts, run (the claiming process' run id), claimant (the worker whose heartbeat
#       is KEYS[6]), channel, claim (the caller's id for this one claim, '' for none), the results
#       stream's maxlen, then the record's result and callback fields, cleared when a new version starts
# Returns {decision, attempts}, or {'retry', 0} when the record changed since KEYS were computed.
BEGIN = _script(9, """
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
  redis.call('HDEL', task, 'error', 'model', 'options', 'completed_at', unpack(ARGV, 17))
end
redis.call('HDEL', task, 'awaiting')
redis.call('HSET', task, 'etag', ARGV[7], 'sequencer', seq, 'worker', worker, 'run', ARGV[12],
           'claim', ARGV[15], 'started_at', ARGV[4], 'attempts', attempts)
if attempts > tonumber(ARGV[11]) then
  redis.call('HSET', task, 'status', 'failed', 'completed_at', ARGV[4],
             'error', 'gave up after ' .. (attempts - 1) .. ' attempts (the worker died or timed out each time)')
  move(ARGV[2], status, 'failed', now, ttl)
  redis.call('ZREM', KEYS[4], ARGV[1])
  touch(ttl)
  emit(KEYS[7], KEYS[8], tonumber(ARGV[16]))
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
#       input_key, channel, the results stream's maxlen, then field/value pairs
# Returns 1 done, 0 refused, -1 when the record changed since KEYS were computed.
FINISH = _script(8, """
local task = KEYS[1]
local status = redis.call('HGET', task, 'status')
if not status or status ~= ARGV[7] then return 0 end
if not keyed_by(ARGV[8]) then return -1 end
if ARGV[2] ~= '*' and (redis.call('HGET', task, 'sequencer') or '') ~= ARGV[2] then return 0 end
local new, now, ttl = ARGV[3], tonumber(ARGV[5]), tonumber(ARGV[6])
for i = 11, #ARGV, 2 do redis.call('HSET', task, ARGV[i], ARGV[i + 1]) end
redis.call('HSET', task, 'status', new)
if new == 'completed' or new == 'failed' then redis.call('HSET', task, 'completed_at', ARGV[4]) end
if new == 'completed' then redis.call('HDEL', task, 'error') end
move(ARGV[8], status, new, now, ttl)
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
touch(ttl)
if new == 'completed' or new == 'failed' then emit(KEYS[6], KEYS[7], tonumber(ARGV[10])) end
redis.call('PUBLISH', ARGV[9], new)
return 1
""")

# A task whose event went to its model's own list: it waits there, pending, until a worker of
# that model's pool claims it or the deadline passes (then expire_overdue fails it, naming the
# model).  A finished task of the same or a newer version is a duplicate and is not touched; a
# newer version of a finished one waits anew.
# ARGV: id, input_key, batches, now_iso, now, ttl, sequencer, model, deadline, channel, then the
#       record's result fields
# Returns 'duplicate', or 'waiting'.
AWAIT = _script(6, """
local task = KEYS[1]
local now, ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
if not keyed_by(ARGV[2]) then return 'retry' end
if redis.call('EXISTS', task) == 0 then
  create(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ttl)
end
local status = redis.call('HGET', task, 'status')
local known = redis.call('HGET', task, 'sequencer') or ''
if (status == 'completed' or status == 'failed') then
  if known ~= '' and ARGV[7] <= known then return 'duplicate' end
  redis.call('HDEL', task, 'error', 'model', 'options', 'completed_at', unpack(ARGV, 11))
end
if status ~= 'processing' then
  redis.call('HSET', task, 'status', 'pending', 'awaiting', ARGV[8])
  move(ARGV[2], status, 'pending', now, ttl)
  redis.call('ZADD', KEYS[5], 'LT', ARGV[9], ARGV[1])  -- the earliest deadline stands
  redis.call('PUBLISH', ARGV[10], 'pending')
end
touch(ttl)
return 'waiting'
""")

# The webhook dispatcher's record of a delivery, on the version it delivered only (a newer
# version has its own callback).  KEYS: the task hash.  ARGV: sequencer, status, attempts, error,
# channel.
CALLBACK = """
if (redis.call('HGET', KEYS[1], 'sequencer') or '') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'callback_status', ARGV[2], 'callback_attempts', ARGV[3],
           'callback_error', ARGV[4])
redis.call('PUBLISH', ARGV[5], 'callback')
return 1
"""
