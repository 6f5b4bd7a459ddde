"""MinIO adapter: get/put objects and presign URLs for clients.

Results follow one version of their input.  The worker reads the exact version its event
names (a GET conditional on the event's ETag), and writes each result with ``publish``, a
compare-and-swap on the result object (S3 conditional writes, which MinIO supports): it
replaces a result only when that result came from the same or an older input version, so a
slow run on an old upload can never overwrite the results of a newer one.

Two SDK clients: one for the endpoint the services reach, one for the public endpoint that
goes into presigned URLs (a signature covers the host, so it must be signed for the host
the client will actually call).  Both come from infra/wiring/connections.py.
"""
from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import hmac
import io
import time
import urllib.parse
from dataclasses import dataclass

from minio.datatypes import PostPolicy
from minio.error import S3Error
from minio.signer import get_credential_string
from minio.time import to_amz_date, to_signer_date

from maskflow.infra.wiring.config import Config
from maskflow.infra.wiring.connections import CHECKSUM_HEADER, minio_client

try:  # 0.01 ms per MB against zlib's 0.18; the worker's install has ISA-L, the API's need not
    from isal.isal_zlib import crc32
except ImportError:
    from zlib import crc32

# How often `publish` re-reads a result that changed under it before giving up; each round
# means another writer won a race on the same key, which takes a new upload of the input.
_PUBLISH_ROUNDS = 5
SOURCE_VERSION = "source-version"
# How long one presigned GET URL is handed out again (see presigned_get).
PRESIGN_REUSE_S = 60


# S3 error codes for "not there": a GET says NoSuchKey, a HEAD (stat) NoSuchObject.
_MISSING_CODES = ("NoSuchKey", "NoSuchObject", "NoSuchBucket")


def is_missing(exc: BaseException) -> bool:
    """Does this error say the object (or its bucket) does not exist?"""
    return isinstance(exc, S3Error) and exc.code in _MISSING_CODES


class ObjectMissing(LookupError):
    """The object (or bucket) does not exist."""


class ObjectChanged(RuntimeError):
    """The object is no longer the version an event announced: a newer upload replaced it."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    data: bytes
    etag: str
    content_type: str
    metadata: dict[str, str]


def body_checksum(data: bytes) -> str:
    """CHECKSUM_HEADER's value for `data`: MinIO stores nothing whose bytes do not match it."""
    return base64.b64encode(crc32(data).to_bytes(4, "big")).decode()


def meta_headers(metadata: dict[str, str] | None) -> dict[str, str]:
    """S3 user metadata as the x-amz-meta-<name> headers (or POST form fields) that carry it."""
    return {f"x-amz-meta-{name}": value for name, value in (metadata or {}).items()}


class ObjectStore:
    def __init__(self, cfg: Config):
        self.bucket = cfg.minio.bucket
        self.client = minio_client(cfg)
        self._public = minio_client(cfg, cfg.minio_public_endpoint)
        scheme = "https" if cfg.minio.secure else "http"
        self._post_url = f"{scheme}://{cfg.minio_public_endpoint}/{self.bucket}"
        self._signed_get = functools.lru_cache(maxsize=4096)(self._sign_get)
        self._region = cfg.minio.region
        self._credentials = (cfg.minio.access_key, cfg.minio.secret_key)

    def get(self, key: str, etag: str = "") -> StoredObject:
        """The object; with `etag`, exactly that version of it, else ObjectChanged."""
        headers = {"If-Match": f'"{etag}"'} if etag else None
        try:
            response = self.client.get_object(self.bucket, key, request_headers=headers)
        except S3Error as exc:
            if is_missing(exc):
                raise ObjectMissing(f"{self.bucket}/{key}: {exc.code}") from None
            if exc.code == "PreconditionFailed":
                raise ObjectChanged(f"{self.bucket}/{key} no longer has ETag {etag}") from None
            raise
        try:
            data = response.read()
            headers = response.headers
        finally:
            response.close()
            response.release_conn()
        metadata = {k[len("x-amz-meta-"):]: v for k, v in headers.items()
                    if k.lower().startswith("x-amz-meta-")}
        return StoredObject(key, data, headers.get("ETag", "").strip('"'),
                            headers.get("Content-Type", ""), metadata)

    def put(self, key: str, data: bytes, content_type: str,
            metadata: dict[str, str] | None = None) -> str:
        result = self.client.put_object(self.bucket, key, io.BytesIO(data), len(data),
                                        content_type=content_type, metadata=metadata or None)
        return result.etag

    def publish(self, key: str, data: bytes, content_type: str, metadata: dict[str, str],
                version: str) -> None:
        """Write a result of input `version` unless `key` holds one of a newer version.

        `version` must compare as a string in version order (fixed-width hex).  Raises
        ObjectChanged when a newer result is already there.
        """
        headers = {"Content-Type": content_type, CHECKSUM_HEADER: body_checksum(data),
                   **meta_headers({**metadata, SOURCE_VERSION: version})}
        condition = {"If-None-Match": "*"}
        for _ in range(_PUBLISH_ROUNDS):
            try:
                # put_object() cannot send If-Match/If-None-Match; _put_object is the SDK's
                # plain single-request PutObject underneath it.
                self.client._put_object(self.bucket, key, data, headers={**headers, **condition})
                return
            except S3Error as exc:
                if exc.code != "PreconditionFailed":
                    raise
            try:
                current = self.client.stat_object(self.bucket, key)
            except S3Error as exc:
                if not is_missing(exc):
                    raise
                condition = {"If-None-Match": "*"}
                continue
            theirs = current.metadata.get(f"x-amz-meta-{SOURCE_VERSION}", "")
            if theirs > version:
                raise ObjectChanged(f"{self.bucket}/{key} already holds the result of a newer upload")
            condition = {"If-Match": f'"{current.etag}"'}
        raise ObjectChanged(f"{self.bucket}/{key} kept changing while it was written")

    def exists(self, key: str) -> bool:
        try:
            self.client.stat_object(self.bucket, key)
            return True
        except S3Error as exc:
            if is_missing(exc):
                return False
            raise

    def presigned_get(self, key: str, expiry_seconds: int) -> str:
        """A GET URL valid for at least `expiry_seconds` from now.

        Signing is half the cost of a task lookup, so one URL per key serves every lookup in
        a PRESIGN_REUSE_S window: it is signed for that much longer than promised.
        """
        window = int(time.time() // PRESIGN_REUSE_S)
        return self._signed_get(key, expiry_seconds + PRESIGN_REUSE_S, window)

    def _sign_get(self, key: str, expiry_seconds: int, _window: int) -> str:
        return self._public.presigned_get_object(self.bucket, key,
                                                 expires=dt.timedelta(seconds=expiry_seconds))

    def presigned_put(self, key: str, expiry_seconds: int, content_type: str, size: int,
                      metadata: dict[str, str] | None = None) -> str:
        """A PUT URL whose signature also covers Content-Type, Content-Length and `metadata`.

        SigV4 query signing as in minio's presign_v4, which signs only `host`: with these
        headers signed, MinIO refuses a body of any other size or type (or a chunked one), and
        an upload without the user metadata (sent as x-amz-meta-<name> headers).
        """
        now = dt.datetime.now(dt.timezone.utc)
        public = urllib.parse.urlsplit(self._post_url)  # scheme://public endpoint/bucket
        headers = {"content-length": str(size), "content-type": content_type,
                   "host": public.netloc,
                   **meta_headers(metadata)}
        signed = ";".join(sorted(headers))
        access_key, secret_key = self._credentials
        path = urllib.parse.quote(f"/{self.bucket}/{key}", safe="/~")
        query = urllib.parse.urlencode(sorted({
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Credential": get_credential_string(access_key, now, self._region),
            "X-Amz-Date": to_amz_date(now),
            "X-Amz-Expires": str(expiry_seconds),
            "X-Amz-SignedHeaders": signed,
        }.items()), quote_via=urllib.parse.quote, safe="~")
        canonical = "\n".join(["PUT", path, query,
                               "".join(f"{name}:{headers[name]}\n" for name in sorted(headers)),
                               signed, "UNSIGNED-PAYLOAD"])
        scope = f"{to_signer_date(now)}/{self._region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", to_amz_date(now), scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        signing_key = ("AWS4" + secret_key).encode()
        for part in (to_signer_date(now), self._region, "s3", "aws4_request"):
            signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
        return f"{public.scheme}://{public.netloc}{path}?{query}&X-Amz-Signature={signature}"

    def presigned_post(self, key: str, content_type: str, max_bytes: int,
                       expires_at: dt.datetime,
                       metadata: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
        """A browser-style POST policy pinned to one key, one content type, a size limit and
        the user `metadata` (form fields x-amz-meta-<name>)."""
        policy = PostPolicy(self.bucket, expires_at)
        policy.add_equals_condition("key", key)
        policy.add_equals_condition("Content-Type", content_type)
        meta_fields = meta_headers(metadata)
        for name, value in meta_fields.items():
            policy.add_equals_condition(name, value)
        policy.add_content_length_range_condition(1, max_bytes)
        fields = self._public.presigned_post_policy(policy)
        return self._post_url, {"key": key, "Content-Type": content_type, **meta_fields, **fields}
