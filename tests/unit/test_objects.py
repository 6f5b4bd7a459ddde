"""Presigned GET URLs are reused for a while, yet never live shorter than promised."""
from __future__ import annotations

import time

from checks import presigned_expires_at
from maskflow.infra.stores.objects import PRESIGN_REUSE_S, ObjectStore
from maskflow.infra.wiring.config import load_config


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
        assert presigned_expires_at(url) >= (handed_out // PRESIGN_REUSE_S) * PRESIGN_REUSE_S + 3600 + PRESIGN_REUSE_S - 1
        assert presigned_expires_at(url) >= time.time() + 3600 - 1  # X-Amz-Date has whole seconds
