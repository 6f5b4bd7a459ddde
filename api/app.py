"""The Falcon application: `create_app(deps)` wires routes; `build_deps(cfg)` makes the real adapters.

Tests build the app around real local Redis/MinIO (or their own stores) through `create_app`;
waitress (api/__main__.py) or any WSGI server calls `get_app()`.
"""
from __future__ import annotations

import logging

import falcon
import orjson

from maskflow.api import errors
from maskflow.api.deps import API, Deps
from maskflow.api.health import HealthResource, MetricsResource, OpenApiResource, ReadyResource
from maskflow.api.lookups import BatchResource, ModelsResource, TaskLookupResource, TaskResource
from maskflow.api.metrics import MetricsMiddleware
from maskflow.api.middleware import BearerAuth, BodyLimit
from maskflow.api.openapi import document
from maskflow.api.rembg import RembgResource
from maskflow.api.results import ResultsResource
from maskflow.api.tokens import TokenSet
from maskflow.api.uploads import SubmitResource, UploadsResource
from maskflow.api.web import StaticResource
from maskflow.infra.stores.objects import ObjectStore
from maskflow.infra.stores.tasks import TaskStore
from maskflow.infra.wiring.config import Config, ConfigError, load_config, split_address
from maskflow.infra.wiring.connections import minio_client, redis_client
from maskflow.infra.wiring.net import is_loopback

log = logging.getLogger("maskflow.api")

DEV_CREDENTIALS = ("minioadmin", "minioadmin")
PROBE_TIMEOUT_S = 0.5


def create_app(deps: Deps) -> falcon.App:
    middleware: list = [MetricsMiddleware(deps.http_metrics)]
    if deps.tokens.enabled:
        middleware.append(BearerAuth(deps.tokens))
    middleware.append(BodyLimit())
    app = falcon.App(middleware=middleware)
    # Answers only: requests keep the stdlib's parser, whose errors the tests pin down.
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = falcon.media.JSONHandler(dumps=orjson.dumps)
    errors.install(app)

    static = StaticResource()
    app.add_route("/", static)
    app.add_route("/static/{name:path}", static, suffix="file")
    app.add_route("/healthz", HealthResource())
    app.add_route("/readyz", ReadyResource(deps))
    app.add_route("/metrics", MetricsResource(deps))
    app.add_route(f"{API}/openapi.json", OpenApiResource(document(deps.cfg)))
    app.add_route(f"{API}/tasks/segmentation", SubmitResource(deps))
    app.add_route(f"{API}/tasks/{{task_id}}", TaskResource(deps))
    app.add_route(f"{API}/tasks", TaskLookupResource(deps))
    app.add_route(f"{API}/uploads", UploadsResource(deps))
    app.add_route(f"{API}/models", ModelsResource(deps))
    app.add_route(f"{API}/batches/{{prefix:path}}", BatchResource(deps))
    app.add_route(f"{API}/results", ResultsResource(deps))
    app.add_route("/api/remove", RembgResource(deps))  # rembg's HTTP server's route
    return app


def check_credentials(cfg: Config) -> None:
    """MinIO's well-known default credentials are tolerated only on a loopback-only setup."""
    if (cfg.minio.access_key, cfg.minio.secret_key) != DEV_CREDENTIALS:
        return
    minio_host = split_address(cfg.minio.endpoint)[0]
    exposed = [f"{key}={host}" for key, host in (("api.host", cfg.api.host),
                                                 ("minio.endpoint", minio_host))
               if not is_loopback(host)]
    if exposed:
        raise ConfigError(f"refusing MinIO's default credentials (minioadmin/minioadmin) with "
                          f"{', '.join(exposed)} not on loopback: set minio.access_key and "
                          f"minio.secret_key")
    log.warning("!!! DEV MODE: MinIO default credentials minioadmin/minioadmin in use; "
                "acceptable on loopback only, never in production !!!")


def build_deps(cfg: Config, config_path: str | None = None) -> Deps:
    """The real adapters; the tokens are watched in the files they came from (api/tokens.py)."""
    check_credentials(cfg)
    # Requests fail fast on a dead Redis; one retry covers a stale pooled connection.
    r = redis_client(cfg, connect_timeout=2, timeout=5, health_check_interval=30, retries=1)
    objects = ObjectStore(cfg)
    # Separate short-timeout clients so /readyz answers within ~1 s even when a server hangs.
    probe_redis = redis_client(cfg, connect_timeout=PROBE_TIMEOUT_S, timeout=PROBE_TIMEOUT_S,
                               retries=0)
    probe_minio = minio_client(cfg, connect_timeout=PROBE_TIMEOUT_S, read_timeout=PROBE_TIMEOUT_S)
    bucket = cfg.minio.bucket

    def minio_bucket() -> bool:
        if not probe_minio.bucket_exists(bucket):
            raise LookupError(f"bucket {bucket} does not exist")
        return True

    tasks = TaskStore(r, cfg)
    tasks.keep_finished()
    return Deps(cfg=cfg, tasks=tasks, objects=objects, redis=r,
                readiness={"redis": probe_redis.ping, "minio": minio_bucket},
                tokens=TokenSet.from_config(cfg, config_path))


def get_app(cfg: Config | None = None) -> falcon.App:
    """WSGI entry point: `waitress-serve --call api.app:get_app` or api/__main__.py."""
    return create_app(build_deps(cfg or load_config()))
