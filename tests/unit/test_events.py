from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maskflow.functions.events import MAX_MESSAGE_BYTES, ObjectCreated, PoisonEvent, parse_message
from maskflow.infra.domain.outputs import result_keys


def record(key: str = "input/a.jpg", name: str = "s3:ObjectCreated:Put", **obj) -> dict:
    return {"eventName": name, "s3": {"bucket": {"name": "ai-segmentation"},
                                      "object": {"key": key, "eTag": "abc", "size": 3,
                                                 "sequencer": "1879E5C8A1B2C3D4", **obj}}}


def message(key: str, name: str = "s3:ObjectCreated:Put", **obj) -> bytes:
    return json.dumps([{"Event": [record(key, name, **obj)], "EventTime": "2026-11-27T00:00:00Z"}]).encode()


@pytest.mark.parametrize("raw_key, key", [
    ("input/a.jpg", "input/a.jpg"),
    ("input/my+photo+%281%29.jpg", "input/my photo (1).jpg"),
    ("input%2Fb1%2Fcat.jpg", "input/b1/cat.jpg"),
    ("input/%D1%84%D0%BE%D1%82%D0%BE.jpg", "input/фото.jpg"),
    ("input/a%2Bb.jpg", "input/a+b.jpg"),
])
def test_keys_are_url_decoded_once(raw_key, key):
    (event,) = parse_message(message(raw_key))
    assert event == ObjectCreated("ai-segmentation", key, "abc", 3, "1879E5C8A1B2C3D4", "s3:ObjectCreated:Put")


@pytest.mark.parametrize("raw, why", [
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[]", "expected a list.*empty"),
    (b"null", "expected a list.*null"),
    (b'{"Event": []}', "expected a list.*object"),
    (b'[{"EventTime": "x"}]', "without an Event list"),
    (b'[{"Event": []}]', "no event records"),
    (b'[{"Event": [{"eventName": "s3:ObjectCreated:Put"}]}]', "without s3"),
    (b'["x"]', "entry 0: expected an object"),
    (b'[{"Event": [7]}]', r"Event\[0\]: expected an object"),
    (b'[{"Event": [{}], "EventTime": 5}]', "EventTime: expected a string"),
    (message("input/a.jpg", name="s3:ObjectRemoved:Delete"), "unsupported event type"),
    (message("input/a.jpg", size="abc"), r'object\.size: expected a non-negative integer, got "abc"'),
    (message("input/a.jpg", size=-1), "size: expected a non-negative integer"),
    (message("input/a.jpg", size=3.0), "size: expected a non-negative integer, got 3.0"),
    (message("input/a.jpg", size=True), "size: expected a non-negative integer, got true"),
    (message("input/a.jpg", size=None), "size: expected a non-negative integer, got null"),
    (message("input/a.jpg", eTag=5), "eTag: expected a string"),
    (message("input/a.jpg", sequencer=None), "sequencer: expected 1 to 32 hex digits, got null"),
    (message("input/a.jpg", sequencer=""), "sequencer: expected 1 to 32 hex digits"),
    (message("input/a.jpg", sequencer="12G4"), "sequencer"),
    (message("input/a.jpg", sequencer="1" * 33), "sequencer"),
    (message("input/a.jpg", sequencer=17), "sequencer"),
    (json.dumps([{"Event": [record(key=12)]}]).encode(), "key: expected a string, got 12"),
    (message(""), "empty object key"),
    (message("input/%FF.jpg"), "not UTF-8"),
    (message("input/" + "a" * 1100), "longer than 1024 bytes"),
    (b'[{"Event": [{"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, '
     b'"object": {"key": "input/\\ud800.jpg", "sequencer": "1"}}}]}]', "not valid Unicode"),
    (json.dumps([{"Event": [{**record(), "eventName": ["s3:ObjectCreated:Put"]}]}]).encode(),
     "eventName: expected a string, got an array"),
    (json.dumps([{"Event": [{**record(), "s3": "x"}]}]).encode(), r"s3: expected an object"),
    (json.dumps([{"Event": [record()]}, "x"]).encode(), "entry 1"),
    (b"[" + b"1" * 5000 + b"]", "not JSON"),          # past Python's int digit limit
    (b"[" * 100_000, "exceeds the limit"),
    (b"[" * 60_000, "not JSON"),                      # nesting deeper than the recursion limit
    (b"9" * 2_000_000, "exceeds the limit of 65536 bytes"),
])
def test_poison_messages_say_why(raw, why):
    with pytest.raises(PoisonEvent, match=why):
        parse_message(raw)


def test_minio_omits_size_and_etag_when_empty():
    rec = record()
    del rec["s3"]["object"]["size"], rec["s3"]["object"]["eTag"]
    (event,) = parse_message(json.dumps([{"Event": [rec], "EventTime": "t"}]).encode())
    assert (event.size, event.etag) == (0, "")


def test_several_entries_and_records_are_all_returned():
    raw = json.dumps([{"Event": [record("input/a.jpg"), record("input/b.jpg")]},
                      {"Event": [record("input/c.jpg")], "EventTime": "t"}]).encode()
    assert [e.key for e in parse_message(raw)] == ["input/a.jpg", "input/b.jpg", "input/c.jpg"]


def test_sequencer_in_either_case_is_accepted():
    assert parse_message(message("input/a.jpg", sequencer="1879e5c8a1b2c3d4"))[0].sequencer == "1879e5c8a1b2c3d4"
    assert parse_message(message("input/a.jpg", sequencer="F" * 32))[0].sequencer == "F" * 32


def test_every_created_variant_is_accepted():
    for name in ("Put", "Post", "Copy", "CompleteMultipartUpload"):
        assert parse_message(message("input/x.png", name=f"s3:ObjectCreated:{name}"))[0].key == "input/x.png"


def test_result_keys_keep_the_extension_so_siblings_never_collide():
    assert result_keys("input/b1/cat.jpg") == {"output": "output/b1/cat.jpg.png", "mask": "masks/b1/cat.jpg.png"}
    assert result_keys("input/b1/cat.png") == {"output": "output/b1/cat.png.png", "mask": "masks/b1/cat.png.png"}
    assert len({tuple(result_keys(f"input/a.{ext}").values()) for ext in ("jpg", "png", "webp")}) == 3


# -- properties: whatever arrives, parsing ends in records or PoisonEvent, never anything else -----
# dict keys are mostly the schema's own names, so random documents reach the deep checks
NAMES = st.sampled_from(["Event", "EventTime", "eventName", "s3", "bucket", "object", "name", "key",
                         "size", "eTag", "sequencer"]) | st.text(max_size=8)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    | st.sampled_from(["s3:ObjectCreated:Put", "input/a.jpg", "1879E5C8A1B2C3D4"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(NAMES, children, max_size=6),
    max_leaves=40)
# values that stress the field checks: wrong types, edge numbers, odd strings
ODD = (JSON | st.sampled_from([-1, 0, 2**63, 1.5, True, "", "abc", "ffff", "s3:ObjectCreated:", "\ud800",
                              "input/%FF", "%2F", None, [], {}]))
PATHS = [("eventName",), ("s3",), ("s3", "bucket"), ("s3", "bucket", "name"), ("s3", "object"),
         ("s3", "object", "key"), ("s3", "object", "size"), ("s3", "object", "eTag"),
         ("s3", "object", "sequencer")]


def parses_or_is_poison(raw: bytes) -> None:
    try:
        events = parse_message(raw)
    except PoisonEvent as exc:
        assert str(exc)  # a reason, for the dead letter
        return
    assert events and all(isinstance(e, ObjectCreated) for e in events)
    for e in events:
        assert isinstance(e.key, str) and e.key and isinstance(e.bucket, str)
        assert type(e.size) is int and e.size >= 0 and isinstance(e.etag, str)
        assert e.event_name.startswith("s3:ObjectCreated:") and 1 <= len(e.sequencer) <= 32
        e.key.encode("utf-8")


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(JSON)
def test_any_json_parses_or_is_poison(value):
    parses_or_is_poison(json.dumps(value).encode())
    parses_or_is_poison(json.dumps([{"Event": [value]}]).encode())
    parses_or_is_poison(json.dumps([{"Event": value, "EventTime": "t"}]).encode())


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_are_poison(raw):
    parses_or_is_poison(raw)


@settings(max_examples=400)
@given(st.sampled_from(PATHS), ODD, st.booleans())
def test_mutated_record_parses_or_is_poison(path, value, delete):
    rec = copy.deepcopy(record())
    parent = rec
    for name in path[:-1]:
        parent = parent[name]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    parses_or_is_poison(json.dumps([{"Event": [rec], "EventTime": "t"}]).encode())


@given(st.binary(min_size=1, max_size=50), st.integers(min_value=0, max_value=200))
def test_truncated_or_spliced_message_parses_or_is_poison(junk, cut):
    raw = message("input/a b.jpg")
    parses_or_is_poison(raw[:cut] + junk + raw[cut:])
    parses_or_is_poison(raw[:cut])


def test_bound_is_checked_before_decoding():
    assert MAX_MESSAGE_BYTES == 64 * 1024
    with pytest.raises(PoisonEvent, match="exceeds the limit"):
        parse_message(b" " * (MAX_MESSAGE_BYTES + 1))


def test_the_requested_model_comes_from_user_metadata_whatever_its_case():
    meta = {"content-type": "image/jpeg", "X-Amz-Meta-Model": "general"}
    (event,) = parse_message(message("input/a.jpg", userMetadata=meta))
    assert event.model == "general"
    (event,) = parse_message(message("input/a.jpg", userMetadata={"x-amz-meta-model": "person"}))
    assert event.model == "person"
    (event,) = parse_message(message("input/a.jpg", userMetadata={"content-type": "image/jpeg"}))
    assert event.model == ""
    with pytest.raises(PoisonEvent, match="userMetadata"):
        parse_message(message("input/a.jpg", userMetadata={"X-Amz-Meta-Model": 7}))
    with pytest.raises(PoisonEvent, match="userMetadata"):
        parse_message(message("input/a.jpg", userMetadata=["general"]))
