"""maskflow settings: one frozen object, loaded once at start-up and passed down.

Precedence: built-in defaults < optional TOML file (``MASKFLOW_CONFIG`` or ``--config``)
< environment variables.  Every key of the original design (``redis.host``,
``minio.bucket``, ``task.timeout`` ...) is overridable as ``MASKFLOW_<SECTION>_<KEY>``,
e.g. ``MASKFLOW_REDIS_PORT=6380`` or ``MASKFLOW_MODEL_INPUT_SIZE=256,256``.

Unknown sections, unknown keys and unknown ``MASKFLOW_*`` variables fail at start-up:
a misspelled setting that is silently ignored is worse than one that stops the process.
Credentials may come from files, ``MASKFLOW_<SECTION>_<KEY>_FILE`` (infra/wiring/sources.py).
"""
from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from pathlib import Path

from maskflow.infra.domain.catalog import DEFAULT, UnknownModel, check_name
from maskflow.infra.domain import options
from maskflow.infra.wiring.settings import (ApiConfig, Config, MinioConfig, ModelConfig, ModelFile, ModelsConfig,
                                            OutputsConfig, QueueConfig, RedisConfig, ResultsConfig, StackConfig,
                                            TaskConfig, WebhookConfig, WorkerConfig)
from maskflow.infra.wiring import sources
from maskflow.infra.wiring.sources import CONFIG_FILE_ENV, ENV_PREFIX
from maskflow.infra.wiring.values import ConfigError, split_address


def _sections() -> dict[str, type]:
    return typing.get_type_hints(Config)


def _validate(cfg: Config) -> None:
    def positive(key: str, value: int) -> None:
        if value <= 0:
            raise ConfigError(f"config key {key}: must be > 0, got {value}")

    for key in ("redis.port", "api.port"):
        section, name = key.split(".")
        port = getattr(getattr(cfg, section), name)
        if not 0 < port < 65536:
            raise ConfigError(f"config key {key}: not a TCP port: {port}")
    for address in cfg.redis.sentinels:
        try:
            split_address(address)
        except ValueError as exc:
            raise ConfigError(f"config key redis.sentinels: {exc}") from None
    if cfg.redis.sentinels and (not cfg.redis.master_name or cfg.redis.master_name.strip() != cfg.redis.master_name
                                or any(c.isspace() or c == "," for c in cfg.redis.master_name)):
        raise ConfigError(f"config key redis.master_name: the Sentinels' name of the master, without "
                          f"spaces or commas; got {cfg.redis.master_name!r}")
    if not 0 <= cfg.redis.db <= 15:
        raise ConfigError(f"config key redis.db: must be 0..15, got {cfg.redis.db}")
    # Target ids end MinIO's environment variable names (MINIO_NOTIFY_REDIS_*_<ID>).
    if not cfg.queue.target_id.isalnum():
        raise ConfigError(f"config key queue.target_id: letters and digits only, got {cfg.queue.target_id!r}")
    if cfg.queue.fast_target_id and (not cfg.queue.fast_target_id.isalnum()
                                     or cfg.queue.fast_target_id == cfg.queue.target_id):
        raise ConfigError("config key queue.fast_target_id: letters and digits only, not "
                          f"queue.target_id, or empty; got {cfg.queue.fast_target_id!r}")
    for key in ("task.timeout", "task.poll_interval", "task.max_polls", "task.max_attempts",
                "task.retention", "task.max_pixels", "outputs.refine_max_pixels", "worker.concurrency", "worker.heartbeat",
                "worker.lease", "worker.retry_attempts", "worker.retry_max_wait", "api.threads", "task.max_upload_bytes", "api.presign_expiry",
                "api.channel_timeout", "model.intra_op_threads", "model.inter_op_threads",
                "model.concurrent_runs",
                "api.connection_limit", "api.request_timeout", "api.min_request_rate",
                "stack.workers", "worker.max_deliveries", "queue.dead_letter_max"):
        section, name = key.split(".")
        positive(key, getattr(getattr(cfg, section), name))
    for size in cfg.model.input_size:
        positive("model.input_size", size)
    # SigV4 signatures live at most 7 days; presigned GET URLs are signed up to a minute longer
    # than promised, to be reused (infra/stores/objects.py).
    if cfg.api.presign_expiry > 7 * 24 * 3600 - 60:
        raise ConfigError(f"config key api.presign_expiry: at most {7 * 24 * 3600 - 60} s, "
                          f"got {cfg.api.presign_expiry}")
    if cfg.worker.lease <= cfg.worker.heartbeat:
        raise ConfigError("config key worker.lease: must exceed worker.heartbeat")
    try:
        split_address(cfg.minio.endpoint)
    except ValueError as exc:
        raise ConfigError(f"config key minio.endpoint: {exc}") from None
    if not cfg.minio.bucket:
        raise ConfigError("config key minio.bucket: must not be empty")
    for key in ("redis.ca_file", "minio.ca_file"):
        section, name = key.split(".")
        path = getattr(getattr(cfg, section), name)
        if path and not Path(path).is_file():
            raise ConfigError(f"config key {key}: no such file: {path}")
    if any(not t or any(c.isspace() or c == "," for c in t) for t in cfg.api.tokens):
        raise ConfigError("config key api.tokens: a token may hold no spaces or commas")
    if cfg.stack.heavy_workers < 0:
        raise ConfigError(f"config key stack.heavy_workers: must be >= 0, got {cfg.stack.heavy_workers}")
    for key, models in (("worker.models", cfg.worker.models), ("stack.heavy_models", cfg.stack.heavy_models)):
        for name in models:
            try:
                check_name(name)
            except UnknownModel as exc:
                raise ConfigError(f"config key {key}: {exc}") from None
    for name in cfg.models.paths:
        if name == DEFAULT:
            raise ConfigError(f"config key models.paths: {DEFAULT!r} is the default model: set model.path")
        try:
            check_name(name)
        except UnknownModel as exc:
            raise ConfigError(f"config key models.paths: {exc}") from None
    _check_by_prefix("outputs.by_prefix", cfg.outputs.by_prefix,
                     lambda query: options.parse(options.parse_query(query)))
    _check_by_prefix("models.by_prefix", cfg.models.by_prefix, check_name)
    _check_webhooks(cfg)


def _check_webhooks(cfg: Config) -> None:
    from maskflow.infra.wiring.outbound import check_url  # it needs the settings, not the loader
    hook = cfg.webhook
    for key in ("max_attempts", "max_age", "timeout", "max_response_bytes", "concurrency", "backoff"):
        if getattr(hook, key) <= 0:
            raise ConfigError(f"config key webhook.{key}: must be > 0, got {getattr(hook, key)}")
    if hook.backoff_max < hook.backoff:
        raise ConfigError("config key webhook.backoff_max: must be at least webhook.backoff")
    if cfg.results.stream_maxlen < 0:
        raise ConfigError(f"config key results.stream_maxlen: must be >= 0, got {cfg.results.stream_maxlen}")
    _check_by_prefix("webhook.by_prefix", hook.by_prefix, lambda url: check_url(url, hook))


def _check_by_prefix(key: str, by_prefix: dict[str, str], check) -> None:
    """Each prefix under input/, and each value what `check` accepts (it raises ValueError)."""
    for prefix, value in by_prefix.items():
        if not prefix.startswith("input/"):
            raise ConfigError(f"config key {key}: prefix {prefix!r} is not under input/")
        try:
            check(value)
        except ValueError as exc:
            raise ConfigError(f"config key {key}: {prefix!r}: {exc}") from None


def load_config(path: str | os.PathLike | None = None,
                env: typing.Mapping[str, str] | None = None) -> Config:
    """Build the settings from defaults, an optional TOML file and the environment."""
    env = os.environ if env is None else env
    sections = _sections()
    values = sources.read(sections, path or env.get(CONFIG_FILE_ENV), env)
    cfg = Config(**{name: sections[name](**values[name]) for name in sections})
    _validate(cfg)
    return cfg


def env_for(cfg: Config, files: Mapping[str, str | os.PathLike] | None = None) -> dict[str, str]:
    """The environment variables that reproduce `cfg` in a child process; the keys in `files`
    ("section.key" -> path) as ``..._FILE`` variables naming the file that holds each."""
    return sources.to_env(cfg, files)


SECRET_KEYS = tuple(sources.secret_keys(_sections()))


def replace(cfg: Config, **sections: dict[str, typing.Any]) -> Config:
    """A copy of `cfg` with some keys changed, e.g. replace(cfg, redis={"port": 7000})."""
    changed = {name: dataclasses.replace(getattr(cfg, name), **keys) for name, keys in sections.items()}
    new = dataclasses.replace(cfg, **changed)
    _validate(new)
    return new


# The sections are declared in settings.py; callers import them from here, with the loader.
__all__ = ["Config", "ConfigError", "load_config", "env_for", "replace", "split_address", "SECRET_KEYS",
           "RedisConfig", "MinioConfig", "ModelConfig", "ModelsConfig", "ModelFile", "OutputsConfig", "TaskConfig",
           "QueueConfig", "WorkerConfig", "ApiConfig", "StackConfig", "ResultsConfig", "WebhookConfig"]
