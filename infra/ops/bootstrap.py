"""Make the bucket ready for work: bucket, notification rule, event list.  Safe to rerun."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import redis
from minio import Minio
from minio.notificationconfig import NotificationConfig, PrefixFilterRule, QueueConfig, SuffixFilterRule

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


def notify_env(cfg: Config, queue_dir: str) -> dict[str, str]:
    """MinIO's environment for the Redis targets the rules name (the stack's and compose's)."""
    env = {}
    targets = [(cfg.queue.target_id, queue_dir), (cfg.queue.fast_target_id, "")]
    for target_id, store in targets:
        if not target_id:
            continue
        env.update({f"MINIO_NOTIFY_REDIS_ENABLE_{target_id}": "on",
                    f"MINIO_NOTIFY_REDIS_ADDRESS_{target_id}": f"{cfg.redis.host}:{cfg.redis.port}",
                    f"MINIO_NOTIFY_REDIS_KEY_{target_id}": cfg.queue.events_key,
                    f"MINIO_NOTIFY_REDIS_FORMAT_{target_id}": "access"})
        if store:
            # Events survive a Redis outage: stored here and replayed when Redis is back.
            env.update({f"MINIO_NOTIFY_REDIS_QUEUE_DIR_{target_id}": store,
                        f"MINIO_NOTIFY_REDIS_QUEUE_LIMIT_{target_id}": "100000"})
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


def bootstrap(cfg: Config, client: Minio, redis_client: redis.Redis) -> None:
    """Create the bucket, apply minio-notify.json, and check MinIO's event key is a list."""
    bucket = cfg.minio.bucket
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    client.set_bucket_notification(bucket, _notification(load_rules(cfg)))
    # MinIO refuses to write events into a key of another type, and would do so silently.
    kind = redis_client.type(cfg.queue.events_key)
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind not in ("none", "list"):
        raise BootstrapError(f"Redis key {cfg.queue.events_key} is a {kind}, not a list: "
                             f"MinIO cannot deliver events into it. Delete it or change queue.events_key.")


def main() -> int:
    """`python -m maskflow.infra.ops.bootstrap`: the compose stack's one-shot init service."""
    try:
        cfg = load_config()
        bootstrap(cfg, connections.minio_client(cfg), connections.redis_client(cfg))
    except (ConfigError, BootstrapError) as exc:
        print(f"maskflow bootstrap: {exc}", file=sys.stderr)
        return 2
    print(f"bucket {cfg.minio.bucket} ready; events go to Redis list {cfg.queue.events_key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
