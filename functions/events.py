"""Typed, read-only views of the messages MinIO's Redis target writes (access format).

One list item is ``[{"Event": [<S3 event record>], "EventTime": "..."}]``.  This is the one
place object keys are URL-decoded: MinIO escapes them like a query string (space as ``+``,
``/`` as ``%2F``, non-ASCII as UTF-8 percent escapes).
"""
from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass

CREATED_PREFIX = "s3:ObjectCreated:"


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

    @classmethod
    def from_record(cls, record: dict) -> "ObjectCreated":
        try:
            name = record["eventName"]
            s3 = record["s3"]
            obj = s3["object"]
            bucket = s3["bucket"]["name"]
            raw_key = obj["key"]
        except (KeyError, TypeError) as exc:
            raise PoisonEvent(f"event record without {exc}") from None
        if not name.startswith(CREATED_PREFIX):
            raise PoisonEvent(f"unsupported event type {name!r}")
        return cls(bucket=bucket, key=urllib.parse.unquote_plus(raw_key),
                   etag=str(obj.get("eTag", "")), size=int(obj.get("size", 0) or 0),
                   sequencer=str(obj.get("sequencer", "")), event_name=name)


def parse_message(raw: bytes) -> list[ObjectCreated]:
    """All object-created records in one list item; PoisonEvent if any part is unusable."""
    try:
        entries = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PoisonEvent(f"not JSON: {exc}") from None
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list) or not entries:
        raise PoisonEvent("expected a list of {Event: [...]} entries")
    records = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("Event"), list):
            raise PoisonEvent("entry without an Event list")
        records.extend(ObjectCreated.from_record(r) for r in entry["Event"])
    if not records:
        raise PoisonEvent("no event records")
    return records
