"""Every Redis and MinIO client is built here, from the config.

Callers differ only in timeouts, and each caller that differs says why where it calls.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import certifi
import urllib3
from minio import Minio
from minio.credentials import StaticProvider
from minio.minioadmin import MinioAdmin

from maskflow.infra.wiring.config import Config, split_address

if TYPE_CHECKING:
    import redis

# Timeouts (seconds) of the services' MinIO clients: a read may be a whole image.
MINIO_CONNECT_TIMEOUT = 5.0
MINIO_READ_TIMEOUT = 60.0
# A body's CRC-32 (base64, big-endian), which S3 and MinIO verify on arrival.
CHECKSUM_HEADER = "x-amz-checksum-crc32"


class ChecksummedMinio(Minio):
    """minio-py's client, but a body sent with its CRC-32 (CHECKSUM_HEADER) is signed as
    UNSIGNED-PAYLOAD.

    Over plain HTTP minio-py signs every body's SHA-256 and MinIO hashes it again to check:
    0.5 ms per MB in each process, for an integrity check that the CRC, computed at 0.01 ms
    per MB, gives as well. MinIO refuses a body that does not match its CRC
    (XAmzContentChecksumMismatch) and the signature covers the header (tests/integration/
    test_checksums.py). Over HTTPS this also saves minio-py's Content-MD5.
    """

    def _build_headers(self, host, headers=None, body=None, creds=None):
        if not (body and headers and CHECKSUM_HEADER in headers):
            return super()._build_headers(host, headers, body, creds)
        headers, date = super()._build_headers(host, headers, None, creds)  # no hash of the body
        headers["Content-Length"] = str(len(body))
        if creds:
            headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
        return headers, date


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
    tls = redis_tls_options(cfg)
    auth = _auth(cfg.redis.username, cfg.redis.password)
    if not cfg.redis.sentinels:
        return redis.Redis(host=cfg.redis.host, port=cfg.redis.port, db=cfg.redis.db, **options, **tls, **auth)
    from redis.sentinel import Sentinel

    # The Sentinels get the same timeouts and TLS, their own credentials, and no retries of
    # their own: asking for the master goes on to the next Sentinel when one does not answer.
    sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
    sentinels = Sentinel([split_address(a) for a in cfg.redis.sentinels],
                         sentinel_kwargs={**sentinel_options, "retry": Retry(NoBackoff(), 0), **tls,
                                          **_auth(cfg.redis.sentinel_username, cfg.redis.sentinel_password)})
    return sentinels.master_for(cfg.redis.master_name, db=cfg.redis.db, **options, **tls, **auth)


def _auth(username: str, password: str) -> dict:
    """redis-py's AUTH arguments: an ACL user, or the default user's password, or none."""
    return {k: v for k, v in (("username", username), ("password", password)) if v}


def redis_tls_options(cfg: Config) -> dict:
    """redis-py's TLS arguments: the server's certificate checked against redis.ca_file."""
    if not cfg.redis.tls:
        return {}
    return {"ssl": True, "ssl_cert_reqs": "required", "ssl_check_hostname": True,
            "ssl_ca_certs": cfg.redis.ca_file or None}


def tls_problem(exc: BaseException, what: str, ca_key: str, ca_file: str) -> str | None:
    """A one-line explanation when `exc` is a certificate the configured CA does not trust."""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" not in text and "certificate verify failed" not in text:
        return None
    trusted = f"{ca_key}={ca_file}" if ca_file else f"the system's CAs ({ca_key} is empty)"
    reason = text[text.find("certificate verify failed"):].split(")")[0].rstrip(" .'\"")
    return f"TLS to {what}: its certificate is not signed by a CA that {trusted} holds ({reason})"


def minio_client(cfg: Config, endpoint: str | None = None, *, connect_timeout: float = MINIO_CONNECT_TIMEOUT,
                 read_timeout: float = MINIO_READ_TIMEOUT) -> Minio:
    """A client of `endpoint` (default: the one the services reach) with the config's keys.

    The region is pinned so presigning needs no network call.
    """
    # No urllib3 retries: our own retries (tenacity, in the worker runtime) decide what is
    # transient, and the pool must not retry underneath them or hang on a dead server.
    http = minio_http(cfg, connect_timeout, read_timeout)
    return ChecksummedMinio(endpoint or cfg.minio.endpoint, access_key=cfg.minio.access_key,
                            secret_key=cfg.minio.secret_key, secure=cfg.minio.secure,
                            region=cfg.minio.region, http_client=http)


def minio_http(cfg: Config, connect_timeout: float = MINIO_CONNECT_TIMEOUT,
               read_timeout: float = MINIO_READ_TIMEOUT) -> urllib3.PoolManager:
    """The HTTP pool under every MinIO client: MinIO's certificate is checked against
    minio.ca_file (else certifi's CAs)."""
    return urllib3.PoolManager(timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
                               maxsize=16, retries=False, cert_reqs="CERT_REQUIRED",
                               ca_certs=cfg.minio.ca_file or certifi.where())


def minio_admin(cfg: Config) -> MinioAdmin:
    """MinIO's admin API with the config's keys (the bootstrap's: root)."""
    return MinioAdmin(endpoint=cfg.minio.endpoint, secure=cfg.minio.secure, region=cfg.minio.region,
                      credentials=StaticProvider(cfg.minio.access_key, cfg.minio.secret_key),
                      http_client=minio_http(cfg))


def tls_check(cfg: Config) -> str | None:
    """With TLS on, a one-line problem if Redis' or MinIO's certificate is not trusted; None
    otherwise, whatever else fails (a server still starting is not a reason to give up)."""
    checks = []
    if cfg.redis.tls:
        checks.append((lambda: redis_client(cfg, timeout=2, connect_timeout=2, retries=0).ping(),
                       f"Redis at {cfg.redis.host}:{cfg.redis.port}", "redis.ca_file", cfg.redis.ca_file))
    if cfg.minio.secure:
        checks.append((lambda: minio_client(cfg, connect_timeout=2, read_timeout=2).bucket_exists(cfg.minio.bucket),
                       f"MinIO at {cfg.minio.endpoint}", "minio.ca_file", cfg.minio.ca_file))
    for probe, what, key, ca_file in checks:
        try:
            probe()
        except Exception as exc:  # noqa: BLE001 - only an untrusted certificate matters here
            problem = tls_problem(exc, what, key, ca_file)
            if problem:
                return problem
    return None
