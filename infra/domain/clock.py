"""Times as the API, the task records and the CLI write them: UTC ISO 8601, milliseconds, Z."""
from __future__ import annotations

import datetime as dt
import time


def utc_iso(ts: float | None = None) -> str:
    """`ts` (seconds since the epoch; default now) as e.g. 2026-01-02T03:04:05.678Z."""
    moment = dt.datetime.fromtimestamp(ts if ts is not None else time.time(), dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
