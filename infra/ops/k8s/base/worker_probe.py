"""Worker probes: `python /etc/maskflow/worker_probe.py live|ready` (see worker.yaml).

A worker refreshes its heartbeat hash every `worker.heartbeat` s with a TTL of `worker.lease` s
(infra/stores/queue.py), from a thread of its own, busy or not; the hash is named after the worker id,
which worker.yaml sets to the pod's name ($WORKER_ID).

live:  exit 1 when Redis answers and the heartbeat has expired: the process is wedged (or
       never got its models loaded and started beating), so a restart helps.  When Redis
       itself cannot be reached the worker is not at fault and restarting it would not help:
       exit 0.
ready: exit 0 only when the heartbeat says the models are loaded (its `ready` field is 1).
"""
import os
import sys

import redis

from maskflow.infra.stores.keys import Heartbeat, heartbeat_key
from maskflow.infra.wiring.config import load_config
from maskflow.infra.wiring.connections import redis_client

mode = sys.argv[1] if len(sys.argv) == 2 else ""
if mode not in ("live", "ready"):
    sys.exit("usage: worker_probe.py live|ready")
key = heartbeat_key(os.environ["WORKER_ID"])
try:
    ready = redis_client(load_config(), timeout=3, connect_timeout=3, retries=0).hget(key, Heartbeat.READY)
except redis.RedisError as exc:
    print(f"Redis unreachable: {exc}")
    sys.exit(0 if mode == "live" else 1)
if ready is None:
    print(f"no heartbeat at {key}")
    sys.exit(1)
if mode == "ready" and ready != b"1":
    print("models not loaded")
    sys.exit(1)
