"""The redelivery header of infra/stores/queue.py: pure logic, no Redis (the Lua side is in tests/integration)."""
from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from maskflow.infra.stores.queue import MAX_REASON_CHARS, REDELIVERY_MARK, unwrap, wrap
from maskflow.infra.stores.source import Delivery

MINIO_MESSAGE = json.dumps([{"Event": [{"eventName": "s3:ObjectCreated:Put"}], "EventTime": "t"}]).encode()


def test_a_message_minio_wrote_is_a_first_delivery():
    assert unwrap(MINIO_MESSAGE) == Delivery(MINIO_MESSAGE, MINIO_MESSAGE, 1, "")


def test_a_handed_back_message_counts_its_deliveries_and_keeps_the_error():
    item = wrap(MINIO_MESSAGE, 2, "ResponseError: WRONGTYPE\nsecond line")
    assert item.startswith(REDELIVERY_MARK) and item.endswith(MINIO_MESSAGE)
    assert unwrap(item) == Delivery(item, MINIO_MESSAGE, 3, "ResponseError: WRONGTYPE\nsecond line")


def test_a_long_error_is_cut():
    assert len(unwrap(wrap(b"m", 1, "x" * 100_000)).last_error) == MAX_REASON_CHARS


@given(st.binary(max_size=200), st.integers(min_value=0, max_value=10**12), st.text(max_size=50))
def test_any_message_survives_wrapping_byte_for_byte(message, deliveries, error):
    item = wrap(message, deliveries, error)
    assert unwrap(item) == Delivery(item, message, deliveries + 1, error)


@given(st.binary(max_size=200))
def test_any_item_unwraps_without_raising(tail):
    for item in (tail, REDELIVERY_MARK + tail):
        delivery = unwrap(item)
        assert delivery.receipt == item and delivery.attempt >= 1
        if delivery.attempt == 1:
            assert delivery.message == item  # not ours: parsing will say what it is


def test_a_header_we_did_not_write_is_left_to_the_parser():
    for header in (b"", b"{}", b'{"deliveries": -1}', b'{"deliveries": 1.5}', b'{"deliveries": "2"}',
                   b'{"deliveries": 2, "last_error": 7}', b"[", b"[" * 50_000):
        item = REDELIVERY_MARK + header + b"\nmessage"
        assert unwrap(item) == Delivery(item, item, 1, "")
    assert unwrap(REDELIVERY_MARK + b'{"deliveries": 2}').attempt == 1  # no newline, no message
