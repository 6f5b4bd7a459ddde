"""Webhook signatures: ``Maskflow-Signature: t=<unix>,v1=<hex>``, the HMAC-SHA256 of
``"<t>." + body`` under `webhook.secret` (the scheme Stripe's webhooks use).

A receiver recomputes it over the raw body, compares in constant time and refuses a
timestamp too old (docs/results.md has a verifier of a few lines).
"""
from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Maskflow-Signature"
DELIVERY_HEADER = "Maskflow-Delivery"  # the stream entry id: the same on every retry of a delivery
TOLERANCE_S = 300


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify(secret: str, body: bytes, header: str, tolerance: int = TOLERANCE_S, now: float | None = None) -> bool:
    """Does `header` sign `body` with `secret`, at a time within `tolerance` seconds of now?"""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))
