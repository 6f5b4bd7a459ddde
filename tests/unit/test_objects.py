"""Presigned GET URLs are reused for a while, yet never live shorter than promised."""
from __future__ import annotations

import datetime as dt
import time
import urllib.parse

from infra.config import load_config
from infra.objects import PRESIGN_REUSE_S, ObjectStore


def expires_at(url: str) -> float:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    signed = dt.datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    return signed.timestamp() + int(query["X-Amz-Expires"][0])


def test_presigned_get_outlives_its_promise_and_is_reused():
    store = ObjectStore(load_config(env={}))  # presigning needs no server: the region is pinned
    first = store.presigned_get("output/a.jpg.png", 3600)
    handed_out = time.time()
    again = store.presigned_get("output/a.jpg.png", 3600)
    other = store.presigned_get("masks/a.jpg.png", 3600)
    # reused within the window unless the window just turned
    assert again == first or int(handed_out // PRESIGN_REUSE_S) != int(time.time() // PRESIGN_REUSE_S)
    assert other != first
    for url in (first, again, other):
        # signed at the latest now, at the earliest when the window began: whenever it is
        # handed out in that window, it still has the promised hour
        assert expires_at(url) >= (handed_out // PRESIGN_REUSE_S) * PRESIGN_REUSE_S + 3600 + PRESIGN_REUSE_S - 1
        assert expires_at(url) >= time.time() + 3600 - 1  # X-Amz-Date has whole seconds
