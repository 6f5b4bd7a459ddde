"""Who may do what: a MinIO user and a Redis ACL user for each process, holding only what its
job needs.

=========  ==========================================================================================
role       may
=========  ==========================================================================================
api        MinIO: put ``input/*`` (its uploads; presigned POST/PUT URLs it signs are bounded by the
           same policy), get and stat ``output/*`` and ``masks/*`` (the results it presigns), HEAD
           the bucket (readiness).  Redis: reads under ``maskflow:`` (tasks, batches, counters,
           queue depth, heartbeats for /metrics), writes only task records, their indexes,
           counters and deadlines (`API_WRITES`), the change feed; never an events list.
worker     MinIO: get ``input/*``; put, get and stat ``output/*`` and ``masks/*`` (conditional
           writes, and the metadata of the result it may replace).  Redis: the events list and
           its in-flight lists, task transitions, heartbeats, dead letters, under ``maskflow:``.
webhooks   MinIO: get ``output/*`` and ``masks/*`` (the results it presigns into the body it sends).
           Redis: its consumer group on the results stream, its schedule and counters
           (``maskflow:webhooks:*``), and a task's callback outcome (the CALLBACK script);
           no events list, no heartbeat, no change feed.
minio      Redis only (MinIO's notification targets): RPUSH to the events list, TYPE of it,
           and the connection commands MinIO's target sends (PING, CLIENT SETNAME).
admin      Redis: everything; the stack's own probes, the bootstrap, an operator.  MinIO's
           counterpart is the root user, which only MinIO and the bootstrap hold.
=========  ==========================================================================================

Streams (``+@stream``) on ``maskflow:*`` are open to the api and worker for the result stream
(issue 28).  FLUSHALL, CONFIG, KEYS, DEBUG, SHUTDOWN, ACL, MONITOR and every other command not
named are off for every role but admin.  Sentinel deployments add the users Sentinel and the
replicas log in as (`SENTINEL_USERS`).
"""
from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from maskflow.infra.domain.outputs import INPUT_PREFIX, RESULT_KINDS
from maskflow.infra.stores.keys import (NAMESPACE, PROCESSING_DEADLINES, STATS_KEY, UPLOAD_DEADLINES, WEBHOOKS_STREAM,
                                        batch_key, index_key, task_channel, task_key)
from maskflow.infra.wiring.config import SECRET_KEYS, Config, env_for, replace

MINIO_ROLES = ("api", "worker", "webhooks")
REDIS_ROLES = ("admin", "api", "worker", "minio", "webhooks")

_CONNECTION = "+ping +select"
_SCRIPTS = "+evalsha +script|load"
_REDIS_COMMANDS = {
    "api": " ".join([
        _CONNECTION, _SCRIPTS,
        "+get +hget +hmget +hgetall +llen +smembers +zrange",                     # lookups, /metrics
        "+exists +set +hset +hdel +hincrby +expire +zadd +zrem +publish",         # its task scripts
        "+psubscribe +punsubscribe +subscribe +unsubscribe",                       # change feed
        "+multi +exec +discard",                                 # a batch's counts with the stream's end
        "+@stream"]),
    "worker": " ".join([
        _CONNECTION, _SCRIPTS,
        "+blmove +lmove +lrange +llen +lrem +lpop +rpop +lpush +rpush +ltrim",     # events, in flight
        "+get +hget +hmget +hgetall +exists +set +hset +hdel +hincrby +expire +del",
        "+sadd +srem +smembers +zadd +zrem +zscore +zrangebyscore +zremrangebyscore +publish",
        "+multi +exec +discard",                                                   # heartbeats
        "+@stream"]),
    "webhooks": " ".join([
        _CONNECTION, _SCRIPTS,
        "+xreadgroup +xack +xautoclaim +xclaim +xgroup|create +xrevrange +xlen",    # its group
        "+zadd +zrem +zrange +hincrby +hincrbyfloat +hdel",                         # schedule, counters
        "+hget +hset +publish"]),                                                  # CALLBACK script
    "minio": "+ping +rpush +type +client|setname",
    "admin": "+@all",
}
# Sentinel and replication on each Redis node (redis.io's documented minimum for both).
SENTINEL_USERS = {
    "sentinel": "allchannels +multi +slaveof +ping +exec +subscribe +config|rewrite +role +publish "
                "+info +client|setname +client|kill +script|kill",
    "replica": "+psync +replconf +ping",
}


# What the api writes: the keys of the task scripts it runs (create_pending, fail_pending), and
# the results and webhooks streams (issue 28).  Not the events lists, in-flight lists,
# heartbeats or dead letters: a compromised API cannot stall the queue or fake a live worker.
# A key the API comes to write goes here.
API_WRITES = (task_key("*"), index_key("*"), batch_key("*"), STATS_KEY, PROCESSING_DEADLINES,
              UPLOAD_DEADLINES, f"{NAMESPACE}:results*", WEBHOOKS_STREAM)


def minio_user(role: str) -> str:
    return f"maskflow-{role}"


def _objects(bucket: str, *prefixes: str) -> list[str]:
    return [f"arn:aws:s3:::{bucket}/{prefix}*" for prefix in prefixes]


def minio_policy(role: str, bucket: str) -> dict:
    """The IAM policy of `role`'s MinIO user: only the prefixes its job touches."""
    results = [kind.prefix for kind in RESULT_KINDS]
    if role == "api":
        statements = [
            {"Effect": "Allow", "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
             "Resource": _objects(bucket, INPUT_PREFIX)},
            {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": _objects(bucket, *results)},
            {"Effect": "Allow", "Action": ["s3:HeadBucket"], "Resource": [f"arn:aws:s3:::{bucket}"]},
        ]
    elif role == "webhooks":
        statements = [{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": _objects(bucket, *results)}]
    elif role == "worker":
        statements = [
            {"Effect": "Allow", "Action": ["s3:GetObject"],
             "Resource": _objects(bucket, INPUT_PREFIX, *results)},
            {"Effect": "Allow", "Action": ["s3:PutObject"], "Resource": _objects(bucket, *results)},
        ]
    else:
        raise ValueError(f"no MinIO role {role!r}")
    return {"Version": "2012-10-17", "Statement": statements}


def redis_rules(role: str, cfg: Config) -> str:
    """The ACL rules of `role`'s Redis user, after its password."""
    if role == "admin":
        return "~* &* " + _REDIS_COMMANDS[role]
    events = cfg.queue.events_key
    if role == "minio":
        return f"resetchannels -@all ~{events} {_REDIS_COMMANDS[role]}"
    if role == "webhooks":
        keys = f"~{NAMESPACE}:webhooks:* ~{task_key('*')}"  # its stream, schedule and counters; the records
        return f"resetchannels -@all {keys} &{task_channel('*')} {_REDIS_COMMANDS[role]}"
    # the events list and the per-model lists beside it (<events_key>:<model>)
    keys = f"~{NAMESPACE}:*" + ("" if events.startswith(f"{NAMESPACE}:") else f" ~{events} ~{events}:*")
    if role == "api":  # reads it all; writes only what its task scripts touch (one pattern
        # must grant a key all it needs: read and write, not %R~ and %W~ from two)
        keys = " ".join([f"%R{k}" for k in keys.split()] + [f"~{k}" for k in API_WRITES])
    return f"resetchannels -@all {keys} &{task_channel('*')} {_REDIS_COMMANDS[role]}"


def acl_line(user: str, password: str, rules: str) -> str:
    """One aclfile line; the password as its SHA-256, so the file holds no secret."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    return f"user {user} on #{digest} resetkeys {rules}"


def acl_file(cfg: Config, passwords: dict[str, str]) -> str:
    """Redis' aclfile: the default user off, and one user per role in `passwords`.

    Off, nobody can log in as `default`, but its rights stay whole: Redis 7.0 checks them when
    it replays a transaction from its AOF at start-up, and with `-@all` it dropped every
    MULTI/EXEC and script effect there (each task transition), losing them on a restart.
    """
    lines = ["user default off resetkeys ~* &* +@all"]
    for user, password in passwords.items():
        rules = redis_rules(user, cfg) if user in REDIS_ROLES else SENTINEL_USERS[user]
        lines.append(acl_line(user, password, rules))
    return "\n".join(lines) + "\n"


class Credentials:
    """Each process' credentials, as files in a directory of its own: ``<dir>/<role>/<name>``
    (mode 0700 directories, files 0600 or `mode`), named like the keys of a Kubernetes Secret:

    ``api/``, ``worker/`` and ``webhooks/``: minio-access-key, minio-secret-key, redis-username, redis-password
    (and ``api/tokens``, the bearer tokens); ``admin/`` and ``minio/``: redis-username, redis-password;
    ``redis/users.acl`` (hashes only) and ``minio/notify.env`` are made from them.

    A secret is created at random on first use and kept ever after, so the stack, the
    bootstrap and `python -m maskflow.infra.ops.credentials` are idempotent.
    """

    def __init__(self, directory: Path, mode: int = 0o600):
        self.directory = directory
        self.mode = mode

    def path(self, role: str, name: str) -> Path:
        return self.directory / role / name

    def _folder(self, role: str) -> Path:
        folder = self.directory / role
        for d in (self.directory, folder):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        return folder

    def secret(self, role: str, name: str) -> str:
        path = self.path(role, name)
        if not path.exists():
            self._folder(role)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.mode)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(24))
            os.chmod(path, self.mode)
        return path.read_text().strip()

    def write(self, role: str, name: str, text: str) -> Path:
        """Replace a file atomically."""
        tmp = self._folder(role) / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, self.mode)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, self.mode)
        return tmp.replace(self.path(role, name))

    def redis_password(self, role: str) -> str:
        return self.secret(role, "redis-password")

    def minio_secret(self, role: str) -> str:
        return self.secret(role, "minio-secret-key")

    def generate(self, cfg: Config) -> None:
        """Every role's files; the users.acl and notify.env made from them."""
        from maskflow.infra.ops.bootstrap import notify_secret_env
        for role in REDIS_ROLES:
            self.write(role, "redis-username", role + "\n")
            self.redis_password(role)
        for role in MINIO_ROLES:
            self.write(role, "minio-access-key", minio_user(role) + "\n")
            self.minio_secret(role)
        self.write("redis", "users.acl", acl_file(cfg, {r: self.redis_password(r) for r in REDIS_ROLES}))
        notify = notify_secret_env(cfg, self.redis_password("minio"))
        self.write("minio", "notify.env", "".join(f"{k}={v}\n" for k, v in notify.items()))


# Inherited variables a service must not see: the caller's own settings and MinIO's root.
_NOT_INHERITED = ("MASKFLOW_", "MINIO_", "AWS_", "REDISCLI_")


def inherited_env() -> dict[str, str]:
    """This process' environment without any setting or credential of its own."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_NOT_INHERITED)}


def service_config(cfg: Config, role: str, credentials: Credentials) -> Config:
    """`cfg` as the `role` process runs it: its own MinIO user and Redis user, nothing more."""
    return replace(cfg, minio={"access_key": minio_user(role), "secret_key": credentials.minio_secret(role)},
                   redis={"username": role, "password": credentials.redis_password(role)},
                   api={"token": "", "tokens": cfg.api_tokens if role == "api" else ()},
                   webhook={"secret": webhook_secret(cfg, credentials) if role == "webhooks" else ""})


def webhook_secret(cfg: Config, credentials: Credentials) -> str:
    """`webhook.secret`, else one made once in the credentials (webhooks/webhook-secret), for
    receivers to verify with."""
    return cfg.webhook.secret or credentials.secret("webhooks", "webhook-secret")


def service_env(cfg: Config, role: str, credentials: Credentials) -> dict[str, str]:
    """The environment of a `role` process: its config, each secret as a file it alone reads.

    The API's tokens are the file named by MASKFLOW_API_TOKENS_FILE when this process has one
    (rotating them is editing it), else the config's, in a file of the credentials directory.
    """
    own = service_config(cfg, role, credentials)
    files = {"minio.secret_key": credentials.path(role, "minio-secret-key"),
             "redis.password": credentials.path(role, "redis-password")}
    if role == "api" and os.environ.get("MASKFLOW_API_TOKENS_FILE"):
        files["api.tokens"] = os.environ["MASKFLOW_API_TOKENS_FILE"]
        own = replace(own, api={"token": cfg.api.token, "tokens": ()})
    for key in SECRET_KEYS:  # the others it has (the Sentinels' password, its tokens)
        section, name = key.split(".")
        value = getattr(getattr(own, section), name)
        if key not in files and value:
            text = "".join(v + "\n" for v in value) if isinstance(value, tuple) else value
            files[key] = credentials.write(role, key, text)
    return {**inherited_env(), **env_for(own, files)}
