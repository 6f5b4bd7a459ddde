from __future__ import annotations

import json

import pytest

from functions.events import ObjectCreated, PoisonEvent, parse_message
from functions.handlers import result_keys


def message(key: str, name: str = "s3:ObjectCreated:Put", **obj) -> bytes:
    record = {"eventName": name, "s3": {"bucket": {"name": "ai-segmentation"},
                                        "object": {"key": key, "eTag": "abc", "size": 3,
                                                   "sequencer": "1879E5C8A1B2C3D4", **obj}}}
    return json.dumps([{"Event": [record], "EventTime": "2026-11-27T00:00:00Z"}]).encode()


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
    (b"[]", "expected a list"),
    (b'[{"EventTime": "x"}]', "without an Event list"),
    (b'[{"Event": []}]', "no event records"),
    (b'[{"Event": [{"eventName": "s3:ObjectCreated:Put"}]}]', "without"),
    (message("input/a.jpg", name="s3:ObjectRemoved:Delete"), "unsupported event type"),
])
def test_poison_messages_say_why(raw, why):
    with pytest.raises(PoisonEvent, match=why):
        parse_message(raw)


def test_every_created_variant_is_accepted():
    for name in ("Put", "Post", "Copy", "CompleteMultipartUpload"):
        assert parse_message(message("input/x.png", name=f"s3:ObjectCreated:{name}"))[0].key == "input/x.png"


def test_result_keys_keep_the_extension_so_siblings_never_collide():
    assert result_keys("input/b1/cat.jpg") == ("output/b1/cat.jpg.png", "masks/b1/cat.jpg.png")
    assert result_keys("input/b1/cat.png") == ("output/b1/cat.png.png", "masks/b1/cat.png.png")
    assert len({result_keys(f"input/a.{ext}") for ext in ("jpg", "png", "webp")}) == 3
