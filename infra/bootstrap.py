"""Make the bucket ready for work: bucket, notification rule, event list.  Safe to rerun."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import redis
from minio import Minio
from minio.notificationconfig import (NotificationConfig, PrefixFilterRule, QueueConfig,
                                      SuffixFilterRule)

from infra import clients
from infra.config import PROJECT_ROOT, Config, ConfigError, load_config

NOTIFY_FILE = PROJECT_ROOT / "minio-notify.json"


class BootstrapError(RuntimeError):
    pass


@dataclass(frozen=True)
class QueueRule:
    arn: str
    events: tuple[str, ...]
    prefix: str
    suffix: str


def redis_target_arn(cfg: Config) -> str:
    return f"arn:minio:sqs::{cfg.queue.target_id}:redis"


def load_rules(cfg: Config, path: Path = NOTIFY_FILE) -> list[QueueRule]:
    doc = json.loads(path.read_text())
    rules = [QueueRule(q["arn"], tuple(q["events"]), q.get("prefix", ""), q.get("suffix", ""))
             for q in doc["queue"]]
    expected = redis_target_arn(cfg)
    for rule in rules:
        if rule.arn != expected:
            raise BootstrapError(f"{path.name}: target {rule.arn} does not match config "
                                 f"queue.target_id (expected {expected})")
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
    """`python -m infra.bootstrap`: the compose stack's one-shot init service."""
    try:
        cfg = load_config()
        bootstrap(cfg, clients.minio_client(cfg), clients.redis_client(cfg))
    except (ConfigError, BootstrapError) as exc:
        print(f"maskflow bootstrap: {exc}", file=sys.stderr)
        return 2
    print(f"bucket {cfg.minio.bucket} ready; events go to Redis list {cfg.queue.events_key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
