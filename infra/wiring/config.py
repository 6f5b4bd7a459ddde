"""maskflow settings: one frozen object, loaded once at start-up and passed down.

Precedence: built-in defaults < optional TOML file (``MASKFLOW_CONFIG`` or ``--config``)
< environment variables.  Every key of the original design (``redis.host``,
``minio.bucket``, ``task.timeout`` ...) is overridable as ``MASKFLOW_<SECTION>_<KEY>``,
e.g. ``MASKFLOW_REDIS_PORT=6380`` or ``MASKFLOW_MODEL_INPUT_SIZE=256,256``.

Unknown sections, unknown keys and unknown ``MASKFLOW_*`` variables fail at start-up:
a misspelled setting that is silently ignored is worse than one that stops the process.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from maskflow.infra.domain.catalog import CATALOG, DEFAULT, UnknownModel, check_name
from maskflow.infra.wiring.values import ConfigError, coerce, split_address

ENV_PREFIX = "MASKFLOW_"
MODELS_DIR = "models"  # the catalogue's files, relative to the working directory
CONFIG_FILE_ENV = "MASKFLOW_CONFIG"


@dataclass(frozen=True)
class RedisConfig:
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    # Redis Sentinel, "host:port" of each (TOML array, or "h1:26379,h2:26379" in the
    # environment).  Empty: every client talks to host:port.  Set: every client asks the
    # Sentinels for the master of `master_name` and follows it across failovers, and host:port
    # is only the address MinIO's notification targets use (MinIO knows no Sentinel), so it
    # must be a stable address of the master: see docs/cluster.md.
    sentinels: tuple[str, ...] = ()
    master_name: str = "maskflow"


@dataclass(frozen=True)
class MinioConfig:
    endpoint: str = "127.0.0.1:9000"
    access_key: str = "minioadmin"
    secret_key: str = "minioadmin"
    bucket: str = "ai-segmentation"
    secure: bool = False
    region: str = "us-east-1"
    # Host clients outside the stack use for presigned URLs; empty means `endpoint`.
    public_endpoint: str = ""
    # The bucket notification rules bootstrap applies.
    notify_file: str = "minio-notify.json"


@dataclass(frozen=True)
class ModelConfig:
    path: str = "models/segmentation.onnx"
    input_size: tuple[int, int] = (256, 256)
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    # Model runs at once per worker process, over all its models.  The stack starts a process
    # per core, so one each keeps the cores busy; every extra U2-Netp run holds ~300 MB more.
    concurrent_runs: int = 1


@dataclass(frozen=True)
class ModelsConfig:
    """The named models beyond the default one (`model.*` is `person`, infra/domain/catalog.py)."""
    # Model name -> its ONNX file, for models elsewhere than the catalogue's file in models/.
    paths: dict[str, str] = field(default_factory=dict)
    # Key prefix -> model name, for uploads that cannot carry x-amz-meta-model (mc mirror).
    by_prefix: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelFile:
    path: Path
    input_size: tuple[int, int]  # width, height, as the manifest beside the file must say


@dataclass(frozen=True)
class TaskConfig:
    timeout: int = 300
    poll_interval: int = 2
    max_polls: int = 150
    max_attempts: int = 3
    retention: int = 7 * 24 * 3600
    max_pixels: int = 40_000_000
    # Largest input accepted on every path: API upload, presigned upload, direct S3 upload.
    max_upload_bytes: int = 20 * 1024 * 1024


@dataclass(frozen=True)
class QueueConfig:
    # The Redis list MinIO's notification target RPUSHes events to.
    events_key: str = "maskflow:events"
    # MinIO's ARN suffix for the Redis target (MINIO_NOTIFY_REDIS_*_<ID>).  It has a queue_dir:
    # no event is lost while Redis is away, but MinIO sends stored events only every 3 s.
    target_id: str = "MASKFLOW"
    # A second Redis target without queue_dir, sent while the upload waits: events arrive in
    # milliseconds, each one twice, and the worker drops the twin before downloading anything.
    # Empty disables it.  MinIO talks to this target without timeouts: a Redis that accepts
    # connections but never answers stalls uploads (a refused connection costs nothing).
    fast_target_id: str = "MASKFLOWFAST"
    # Dead letters kept; past this the oldest are trimmed, so the list cannot fill Redis.
    dead_letter_max: int = 10_000


@dataclass(frozen=True)
class WorkerConfig:
    concurrency: int = 2
    heartbeat: int = 10
    # Heartbeats missed for this long mark a worker dead and its in-flight events orphaned.
    lease: int = 30
    # Transient faults (S3/Redis unreachable, 5xx, SlowDown) are retried with exponential
    # backoff 0.5 s, 1 s, 2 s ... capped at retry_max_wait: 8 attempts ride out ~45 s of outage.
    retry_attempts: int = 8
    retry_max_wait: int = 10
    # A message taken this many times without being settled goes to the dead letters.
    max_deliveries: int = 5


@dataclass(frozen=True)
class ApiConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int = 8
    channel_timeout: int = 120
    presign_expiry: int = 3600
    token: str = ""
    # Hostile clients (api/server.py): connections held at once, and a request must arrive
    # within request_timeout seconds plus one second per min_request_rate bytes sent.
    connection_limit: int = 1000
    request_timeout: int = 10
    min_request_rate: int = 32 * 1024


@dataclass(frozen=True)
class StackConfig:
    data_dir: str = ".maskflow"
    # One worker process per core, each with worker.concurrency (2) threads: measured with
    # tests/bench/compare.py on 2 cores, 800 photos: 1 x 2 drained at 0.88x the naive
    # 2-process loop, 2 x 1 at 0.96x, 2 x 2 at 1.01x.
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    # Use these binaries instead of building the pinned MinIO/mc (see infra/ops/install.py).
    minio_bin: str = ""
    mc_bin: str = ""


@dataclass(frozen=True)
class Config:
    redis: RedisConfig = field(default_factory=RedisConfig)
    minio: MinioConfig = field(default_factory=MinioConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    stack: StackConfig = field(default_factory=StackConfig)

    @property
    def data_dir(self) -> Path:
        return _project_path(self.stack.data_dir)

    @property
    def model_files(self) -> dict[str, ModelFile]:
        """Every catalogue model's file and input size, by name.

        The default model's are the original design's keys `model.path` and `model.input_size`;
        every other one's come from the catalogue, its file under models/ unless `models.paths`
        names another.
        """
        files = {}
        for name, entry in CATALOG.items():
            if name == DEFAULT:
                files[name] = ModelFile(_project_path(self.model.path), self.model.input_size)
            else:
                path = self.models.paths.get(name) or str(Path(MODELS_DIR) / entry.model_file)
                files[name] = ModelFile(_project_path(path), entry.input_size)
        return files

    @property
    def notify_path(self) -> Path:
        return _project_path(self.minio.notify_file)

    @property
    def api_url(self) -> str:
        return f"http://{self.api.host}:{self.api.port}"

    @property
    def minio_public_endpoint(self) -> str:
        return self.minio.public_endpoint or self.minio.endpoint


def _project_path(value: str) -> Path:
    # Relative paths are the working directory's (a checkout, or /app in the images), never
    # the installed package's: site-packages holds no models.
    return Path(value).absolute()


def _sections() -> dict[str, type]:
    return typing.get_type_hints(Config)


def _resolved_types(cls: type) -> dict[str, typing.Any]:
    return typing.get_type_hints(cls)


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
                "task.retention", "task.max_pixels", "worker.concurrency", "worker.heartbeat",
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
    for name in cfg.models.paths:
        if name == DEFAULT:
            raise ConfigError(f"config key models.paths: {DEFAULT!r} is the default model: set model.path")
        try:
            check_name(name)
        except UnknownModel as exc:
            raise ConfigError(f"config key models.paths: {exc}") from None
    for prefix, name in cfg.models.by_prefix.items():
        if not prefix.startswith("input/"):
            raise ConfigError(f"config key models.by_prefix: prefix {prefix!r} is not under input/")
        try:
            check_name(name)
        except UnknownModel as exc:
            raise ConfigError(f"config key models.by_prefix: {prefix!r}: {exc}") from None


def load_config(path: str | os.PathLike | None = None,
                env: typing.Mapping[str, str] | None = None) -> Config:
    """Build the settings from defaults, an optional TOML file and the environment."""
    env = os.environ if env is None else env
    sections = _sections()
    values: dict[str, dict[str, typing.Any]] = {name: {} for name in sections}

    path = path or env.get(CONFIG_FILE_ENV)
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path}: not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        for section, table in data.items():
            if section not in sections or not isinstance(table, dict):
                raise ConfigError(f"config file {path}: unknown section [{section}]")
            hints = _resolved_types(sections[section])
            for key, raw in table.items():
                if key not in hints:
                    raise ConfigError(f"config key {section}.{key}: unknown key")
                values[section][key] = coerce(f"{section}.{key}", hints[key], raw)

    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_FILE_ENV:
            continue
        section_key = name[len(ENV_PREFIX):].lower()
        section, _, key = section_key.partition("_")
        hints = _resolved_types(sections[section]) if section in sections else {}
        if key not in hints:
            raise ConfigError(f"environment variable {name}: no such config key {section}.{key}")
        values[section][key] = coerce(f"{section}.{key}", hints[key], raw)

    cfg = Config(**{name: sections[name](**values[name]) for name in sections})
    _validate(cfg)
    return cfg


def env_for(cfg: Config) -> dict[str, str]:
    """The environment variables that reproduce `cfg` in a child process."""
    out: dict[str, str] = {}
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        for f in dataclasses.fields(sub):
            value = getattr(sub, f.name)
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, tuple):
                text = ",".join(str(v) for v in value)
            elif isinstance(value, dict):
                text = ",".join(f"{k}={v}" for k, v in value.items())
            else:
                text = str(value)
            out[f"{ENV_PREFIX}{section.name.upper()}_{f.name.upper()}"] = text
    return out


def replace(cfg: Config, **sections: dict[str, typing.Any]) -> Config:
    """A copy of `cfg` with some keys changed, e.g. replace(cfg, redis={"port": 7000})."""
    changed = {name: dataclasses.replace(getattr(cfg, name), **keys) for name, keys in sections.items()}
    new = dataclasses.replace(cfg, **changed)
    _validate(new)
    return new


__all__ = ["Config", "ConfigError", "load_config", "env_for", "replace", "split_address",
           "RedisConfig", "MinioConfig", "ModelConfig", "TaskConfig", "QueueConfig",
           "WorkerConfig", "ApiConfig", "StackConfig"]
