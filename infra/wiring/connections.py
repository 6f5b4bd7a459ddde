"""Every Redis and MinIO client is built here, from the config.

Callers differ only in timeouts, and each caller that differs says why where it calls.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import certifi
import urllib3
from minio import Minio

from maskflow.infra.wiring.config import Config, split_address

if TYPE_CHECKING:
    import redis

# Timeouts (seconds) of the services' MinIO clients: a read may be a whole image.
MINIO_CONNECT_TIMEOUT = 5.0
MINIO_READ_TIMEOUT = 60.0


def redis_client(cfg: Config, *, timeout: float | None = None, connect_timeout: float | None = None,
                 health_check_interval: int | None = None, retries: int | None = None) -> redis.Redis:
    """A client of the configured Redis; an option left as None keeps redis-py's default.

    `retries` replaces redis-py's retry policy by that many immediate retries.  With
    `redis.sentinels` set it is a client of the master the Sentinels name, with the same
    options: a connection that breaks, or finds its server demoted to a replica (READONLY),
    asks the Sentinels again, so the client follows a failover.  Lua scripts
    (`register_script`) run as EVALSHA and load themselves again on NOSCRIPT, which is what a
    freshly promoted replica answers.
    """
    # Imported here, not above: the CLI's direct upload needs only minio_client, and redis
    # takes about 0.1 s to import.
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    options: dict = {"socket_timeout": timeout, "socket_connect_timeout": connect_timeout,
                     "health_check_interval": health_check_interval,
                     "retry": None if retries is None else Retry(NoBackoff(), retries)}
    options = {k: v for k, v in options.items() if v is not None}
    if not cfg.redis.sentinels:
        return redis.Redis(host=cfg.redis.host, port=cfg.redis.port, db=cfg.redis.db, **options)
    from redis.sentinel import Sentinel

    # The Sentinels get the same timeouts and no retries of their own: asking for the master
    # goes on to the next Sentinel when one does not answer.
    sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
    sentinels = Sentinel([split_address(a) for a in cfg.redis.sentinels],
                         sentinel_kwargs={**sentinel_options, "retry": Retry(NoBackoff(), 0)})
    return sentinels.master_for(cfg.redis.master_name, db=cfg.redis.db, **options)


def minio_client(cfg: Config, endpoint: str | None = None, *, connect_timeout: float = MINIO_CONNECT_TIMEOUT,
                 read_timeout: float = MINIO_READ_TIMEOUT) -> Minio:
    """A client of `endpoint` (default: the one the services reach) with the config's keys.

    The region is pinned so presigning needs no network call.
    """
    # No urllib3 retries: our own retries (tenacity, in the worker runtime) decide what is
    # transient, and the pool must not retry underneath them or hang on a dead server.
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
                               maxsize=16, retries=False, ca_certs=certifi.where())
    return Minio(endpoint or cfg.minio.endpoint, access_key=cfg.minio.access_key,
                 secret_key=cfg.minio.secret_key, secure=cfg.minio.secure, region=cfg.minio.region,
                 http_client=http)
