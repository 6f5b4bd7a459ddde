"""Typed, read-only views of the messages MinIO's Redis target writes (access format).

One list item is ``[{"Event": [<S3 event record>], "EventTime": "..."}]`` (MinIO writes one
entry with one record; a list of such entries is accepted).  Parsing is strict: any other
shape, type or value raises PoisonEvent with a reason naming the field, and nothing else is
ever raised, so one bad message can only end as a dead letter.

This is the one place object keys are URL-decoded: MinIO escapes them like a query string
(space as ``+``, ``/`` as ``%2F``, non-ASCII as UTF-8 percent escapes).
"""
from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from maskflow.infra.domain import options
from maskflow.infra.domain.catalog import METADATA_KEY
from maskflow.infra.wiring.outbound import CALLBACK_METADATA_KEY

CREATED_PREFIX = "s3:ObjectCreated:"
# A real message is about 1-2 KiB (keys are at most 1024 bytes, 3x when escaped); the bound
# keeps a hostile item from costing more than a moment to reject.
MAX_MESSAGE_BYTES = 64 * 1024
MAX_KEY_BYTES = 1024  # S3's limit on object names
# MinIO's sequencer is the event time in ns as hex (%X); tasks compare it padded to 32 digits.
_SEQUENCER = re.compile(r"[0-9A-Fa-f]{1,32}")


class PoisonEvent(ValueError):
    """A message no handler can ever process: not JSON, wrong shape or an unknown event type."""


@dataclass(frozen=True)
class ObjectCreated:
    bucket: str
    key: str
    etag: str
    size: int
    sequencer: str
    event_name: str
    model: str = ""  # the object's x-amz-meta-model, if any; checked against the catalogue later
    options: dict = field(default_factory=dict)  # its x-amz-meta-<option> texts; checked later
    callback_url: str = ""  # its x-amz-meta-callback-url, if any; checked at claim
    record: dict = field(default_factory=dict, compare=False, repr=False)  # as MinIO wrote it

    def as_message(self) -> bytes:
        """This record alone, as a message of the format it came in."""
        return json.dumps([{"Event": [self.record]}]).encode()

    @classmethod
    def from_record(cls, record: Any, where: str = "record") -> "ObjectCreated":
        record = _object(record, where)
        name = _text(_required(record, "eventName", where), f"{where}.eventName")
        if not name.startswith(CREATED_PREFIX):
            raise PoisonEvent(f"unsupported event type {_describe(name)}")
        s3 = _object(_required(record, "s3", where), f"{where}.s3")
        bucket = _object(_required(s3, "bucket", f"{where}.s3"), f"{where}.s3.bucket")
        obj = _object(_required(s3, "object", f"{where}.s3"), f"{where}.s3.object")
        at = f"{where}.s3.object"
        return cls(bucket=_text(_required(bucket, "name", f"{where}.s3.bucket"), f"{where}.s3.bucket.name"),
                   key=_key(_required(obj, "key", at), f"{at}.key"),
                   # MinIO omits eTag and size when empty or zero (Go's omitempty)
                   etag=_text(obj.get("eTag", ""), f"{at}.eTag"),
                   size=_size(obj.get("size", 0), f"{at}.size"),
                   sequencer=_sequencer(_required(obj, "sequencer", at), f"{at}.sequencer"),
                   event_name=name,
                   model=_requested_meta(obj.get("userMetadata", {}), f"{at}.userMetadata", METADATA_KEY),
                   callback_url=_requested_meta(obj.get("userMetadata", {}), f"{at}.userMetadata",
                                                CALLBACK_METADATA_KEY),
                   options=_requested_options(obj.get("userMetadata", {}), f"{at}.userMetadata"),
                   record=record)


def parse_message(raw: bytes) -> list[ObjectCreated]:
    """All object-created records in one list item; PoisonEvent if any part is unusable."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise PoisonEvent(f"message of {len(raw)} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes")
    try:
        entries = json.loads(raw.decode("utf-8"))
    # ValueError covers JSONDecodeError and ints past Python's digit limit; RecursionError, deep nesting
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PoisonEvent(f"not JSON: {exc}") from None
    if not isinstance(entries, list):
        raise PoisonEvent(f"expected a list of {{Event: [...]}} entries, got {_describe(entries)}")
    if not entries:
        raise PoisonEvent("expected a list of {Event: [...]} entries, got an empty list")
    records = []
    for i, entry in enumerate(entries):
        where = f"entry {i}"
        entry = _object(entry, where)
        if "EventTime" in entry:
            _text(entry["EventTime"], f"{where}.EventTime")
        event = entry.get("Event")
        if not isinstance(event, list):
            raise PoisonEvent(f"{where} without an Event list")
        if not event:
            raise PoisonEvent(f"{where}: no event records")
        records.extend(ObjectCreated.from_record(r, f"{where}.Event[{j}]") for j, r in enumerate(event))
    return records


# -- field checks: each returns the value or raises PoisonEvent naming the field -------------------
def _required(mapping: dict, name: str, where: str) -> Any:
    if name not in mapping:
        raise PoisonEvent(f"{where} without {name}")
    return mapping[name]


def _object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise PoisonEvent(f"{where}: expected an object, got {_describe(value)}")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise PoisonEvent(f"{where}: expected a string, got {_describe(value)}")
    try:
        value.encode("utf-8")  # JSON allows lone surrogates; Redis and S3 would choke on them later
    except UnicodeEncodeError:
        raise PoisonEvent(f"{where}: not valid Unicode") from None
    return value


def _key(value: Any, where: str) -> str:
    raw = _text(value, where)
    try:
        key = urllib.parse.unquote_plus(raw, errors="strict")
    except UnicodeDecodeError:
        raise PoisonEvent(f"{where}: escapes that are not UTF-8") from None
    if not key:
        raise PoisonEvent(f"{where}: empty object key")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise PoisonEvent(f"{where}: longer than {MAX_KEY_BYTES} bytes")
    return key


def _size(value: Any, where: str) -> int:
    # bool is an int subclass; floats and strings are not sizes either
    if type(value) is not int or value < 0:
        raise PoisonEvent(f"{where}: expected a non-negative integer, got {_describe(value)}")
    return value


def _sequencer(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _SEQUENCER.fullmatch(value):
        raise PoisonEvent(f"{where}: expected 1 to 32 hex digits, got {_describe(value)}")
    return value


def _requested_meta(value: Any, where: str, key: str) -> str:
    # MinIO keeps the header's spelling (X-Amz-Meta-Model); S3 metadata names are case-blind.
    metadata = _object(value, where)
    wanted = f"x-amz-meta-{key}"
    for name, text in metadata.items():
        if name.lower() == wanted:
            return _text(text, f"{where}.{name}")
    return ""


def _requested_options(value: Any, where: str) -> dict[str, str]:
    texts = {name: _text(text, f"{where}.{name}") for name, text in _object(value, where).items()}
    return options.from_metadata(texts)


def _describe(value: Any) -> str:
    """A short JSON rendering of a bad value for the dead letter's reason."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    try:
        text = json.dumps(value)
    except ValueError:  # an int past the digit limit
        return type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


# Message format -> parser; an event source names its format (infra/stores/source.py).
PARSERS: dict[str, Callable[[bytes], list[ObjectCreated]]] = {"minio-access": parse_message}
