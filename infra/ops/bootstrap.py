"""Make the bucket ready for work: bucket, notification rule, event list, and a MinIO user with
its own policy for each service (infra/ops/roles.py).  Safe to rerun.

Only the bootstrap holds MinIO's root credentials besides MinIO itself.  Run as the compose
stack's and Kubernetes' one-shot (`python -m maskflow.infra.ops.bootstrap --credentials DIR`),
it reads each service's MinIO access key and secret key from ``DIR/<role>/minio-access-key``
and ``DIR/<role>/minio-secret-key`` (a Kubernetes Secret mounted per role, or compose secrets).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import redis
from minio import Minio
from minio.error import MinioAdminException, S3Error, ServerError
from minio.minioadmin import MinioAdmin
from minio.notificationconfig import NotificationConfig, PrefixFilterRule, QueueConfig, SuffixFilterRule
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from maskflow.infra.ops import roles
from maskflow.infra.ops.processes import READY_TIMEOUT
from maskflow.infra.wiring import connections
from maskflow.infra.wiring.config import Config, ConfigError, load_config


class BootstrapError(RuntimeError):
    pass


@dataclass(frozen=True)
class QueueRule:
    arn: str
    events: tuple[str, ...]
    prefix: str
    suffix: str


def redis_target_arn(target_id: str) -> str:
    return f"arn:minio:sqs::{target_id}:redis"


def _target_ids(cfg: Config) -> list[str]:
    return [t for t in (cfg.queue.target_id, cfg.queue.fast_target_id) if t]


def notify_env(cfg: Config, queue_dir: str, redis_address: str | None = None) -> dict[str, str]:
    """MinIO's environment for the Redis targets the rules name (the stack's and compose's).

    Their login, the ACL user `minio` (roles.py), is in `notify_secret_env`: MinIO reads it
    from its MINIO_CONFIG_ENV_FILE.  The pinned MinIO's target sends AUTH <user> <password>
    when both are set (internal/event/target/redis.go), so ACL users work."""
    env = {}
    targets = [(cfg.queue.target_id, queue_dir), (cfg.queue.fast_target_id, "")]
    for target_id, store in targets:
        if not target_id:
            continue
        env.update({f"MINIO_NOTIFY_REDIS_ENABLE_{target_id}": "on",
                    f"MINIO_NOTIFY_REDIS_ADDRESS_{target_id}": redis_address or f"{cfg.redis.host}:{cfg.redis.port}",
                    f"MINIO_NOTIFY_REDIS_KEY_{target_id}": cfg.queue.events_key,
                    f"MINIO_NOTIFY_REDIS_FORMAT_{target_id}": "access"})
        if store:
            # Events survive a Redis outage: stored here and replayed when Redis is back.
            env.update({f"MINIO_NOTIFY_REDIS_QUEUE_DIR_{target_id}": store,
                        f"MINIO_NOTIFY_REDIS_QUEUE_LIMIT_{target_id}": "100000"})
    return env


def notify_secret_env(cfg: Config, password: str) -> dict[str, str]:
    """The targets' Redis login (user `minio`), for MinIO's MINIO_CONFIG_ENV_FILE."""
    env = {}
    for target_id in _target_ids(cfg):
        env.update({f"MINIO_NOTIFY_REDIS_USER_{target_id}": "minio",
                    f"MINIO_NOTIFY_REDIS_PASSWORD_{target_id}": password})
    return env


def load_rules(cfg: Config, path: Path | None = None) -> list[QueueRule]:
    """The file's rules, each checked against the target its `role` names in the config.

    Rules for the fast target are left out when queue.fast_target_id is empty.
    """
    targets = {"durable": ("queue.target_id", cfg.queue.target_id),
               "fast": ("queue.fast_target_id", cfg.queue.fast_target_id)}
    path = path or cfg.notify_path
    rules = []
    for q in json.loads(path.read_text())["queue"]:
        if q.get("role") not in targets:
            raise BootstrapError(f"{path.name}: rule for {q.get('arn')} needs a role, durable or fast")
        key, target_id = targets[q["role"]]
        if not target_id:
            continue
        if q["arn"] != redis_target_arn(target_id):
            raise BootstrapError(f"{path.name}: target {q['arn']} does not match config {key} "
                                 f"(expected {redis_target_arn(target_id)})")
        rules.append(QueueRule(q["arn"], tuple(q["events"]), q.get("prefix", ""), q.get("suffix", "")))
    if not any(rule.arn == redis_target_arn(cfg.queue.target_id) for rule in rules):
        raise BootstrapError(f"{path.name}: no rule for the durable target {cfg.queue.target_id}")
    return rules


def _notification(rules: list[QueueRule]) -> NotificationConfig:
    return NotificationConfig(queue_config_list=[
        QueueConfig(events=list(rule.events), queue=rule.arn, config_id=f"maskflow-{i}",
                    prefix_filter_rule=PrefixFilterRule(rule.prefix) if rule.prefix else None,
                    suffix_filter_rule=SuffixFilterRule(rule.suffix) if rule.suffix else None)
        for i, rule in enumerate(rules)])


def provision(cfg: Config, admin: MinioAdmin, users: dict[str, tuple[str, str]]) -> None:
    """Each role's MinIO user (role -> access key, secret key) with exactly its policy."""
    for role, (access_key, secret_key) in users.items():
        policy = roles.minio_user(role)
        admin.policy_add(policy, policy=roles.minio_policy(role, cfg.minio.bucket))
        admin.user_add(access_key, secret_key)  # an existing user gets this secret
        admin.policy_set(policy, user=access_key)


def bootstrap(cfg: Config, client: Minio, redis_client: redis.Redis, admin: MinioAdmin | None = None,
              users: dict[str, tuple[str, str]] | None = None) -> None:
    """Create the bucket, apply minio-notify.json, check MinIO's event key is a list, and
    (with `admin`) create the services' users."""
    bucket = cfg.minio.bucket
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    client.set_bucket_notification(bucket, _notification(load_rules(cfg)))
    if admin is not None and users:
        provision(cfg, admin, users)
    # MinIO refuses to write events into a key of another type, and would do so silently.
    kind = redis_client.type(cfg.queue.events_key)
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind not in ("none", "list"):
        raise BootstrapError(f"Redis key {cfg.queue.events_key} is a {kind}, not a list: "
                             f"MinIO cannot deliver events into it. Delete it or change queue.events_key.")


def bootstrap_when_ready(cfg: Config, client: Minio, redis_client: redis.Redis, admin: MinioAdmin,
                         users: dict[str, tuple[str, str]], reload_acl: bool = False) -> None:
    """`bootstrap`, retried while MinIO is still starting; every failure a BootstrapError whose
    message says what to do.  `reload_acl`: a running Redis takes the aclfile as it is now."""
    # For a moment after /minio/health/ready turns 200, MinIO answers bucket calls with 503
    # and does not know its notification targets yet (they connect in the background).
    starting_up = retry_if_exception(lambda e: isinstance(e, ServerError) or (
        isinstance(e, S3Error) and (e.code == "XMinioServerNotInitialized" or (
            e.code == "InvalidArgument" and "ARN" in (e.message or "")))))
    try:
        if reload_acl:
            redis_client.acl_load()
        for attempt in Retrying(retry=starting_up, stop=stop_after_delay(READY_TIMEOUT),
                                wait=wait_exponential(multiplier=0.05, max=1), reraise=True):
            with attempt:
                bootstrap(cfg, client, redis_client, admin=admin, users=users)
    except (redis.ConnectionError, OSError) as exc:
        raise BootstrapError(connections.tls_problem(exc, f"Redis at {cfg.redis.host}:{cfg.redis.port}",
                                                     "redis.ca_file", cfg.redis.ca_file)
                             or f"Redis bootstrap failed: {exc}") from None
    except MinioAdminException as exc:
        raise BootstrapError(f"MinIO refused to create the services' users ({exc._code}): "
                             f"MASKFLOW_MINIO_ACCESS_KEY must be its root user") from None
    except S3Error as exc:
        if exc.code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
            raise BootstrapError(f"MinIO at {cfg.minio.endpoint} rejected the credentials "
                                 f"({exc.code}): set MASKFLOW_MINIO_ACCESS_KEY and "
                                 f"MASKFLOW_MINIO_SECRET_KEY to its root user") from None
        raise BootstrapError(f"MinIO bootstrap failed: {exc.code}: {exc.message}") from None
    except ServerError as exc:
        raise BootstrapError(f"MinIO bootstrap failed: {exc}") from None
    except Exception as exc:  # urllib3's SSLError hides under MaxRetryError
        problem = connections.tls_problem(exc, f"MinIO at {cfg.minio.endpoint}", "minio.ca_file", cfg.minio.ca_file)
        if problem is None:
            raise
        raise BootstrapError(problem) from None


def read_users(directory: Path) -> dict[str, tuple[str, str]]:
    """Each role's MinIO keys from DIR/<role>/minio-access-key and minio-secret-key."""
    users = {}
    for role in roles.MINIO_ROLES:
        folder = directory / role
        try:
            access = (folder / "minio-access-key").read_text().strip() \
                if (folder / "minio-access-key").exists() else roles.minio_user(role)
            users[role] = (access, (folder / "minio-secret-key").read_text().strip())
        except OSError as exc:
            raise BootstrapError(f"--credentials {directory}: cannot read {exc.filename}: {exc.strerror}") from None
        if len(users[role][1]) < 8:
            raise BootstrapError(f"{folder / 'minio-secret-key'}: MinIO needs at least 8 characters")
    return users


def main(argv: list[str] | None = None) -> int:
    """`python -m maskflow.infra.ops.bootstrap`: the compose stack's and K8s' one-shot init."""
    parser = argparse.ArgumentParser(prog="python -m maskflow.infra.ops.bootstrap")
    parser.add_argument("--credentials", type=Path, metavar="DIR",
                        help="create a MinIO user per service from DIR/<role>/minio-*-key")
    args = parser.parse_args(argv)
    try:
        cfg = load_config()
        users = read_users(args.credentials) if args.credentials else None
        bootstrap_when_ready(cfg, connections.minio_client(cfg), connections.redis_client(cfg),
                             connections.minio_admin(cfg), users or {})
    except (ConfigError, BootstrapError) as exc:
        print(f"maskflow bootstrap: {exc}", file=sys.stderr)
        return 2
    print(f"bucket {cfg.minio.bucket} ready; events go to Redis list {cfg.queue.events_key}"
          + (f"; users {', '.join(u for u, _ in users.values())} ready" if users else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
