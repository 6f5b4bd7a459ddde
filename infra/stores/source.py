"""What a worker needs of wherever its events come from: take, ack, give back, dead-letter.

Today's source is the Redis list MinIO's bucket notification writes (infra/stores/queue.py).
Another one (S3-format events from an SQS-compatible queue, a Redis Stream) would be one more
module implementing `EventSource`; its `format` picks the parser that reads its messages
(functions/events.py).  A delivery's `receipt` is the source's own handle on the message, and
nobody else looks inside it.
"""
from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Delivery:
    """One message taken from a source."""
    receipt: Hashable    # the source's handle: what ack, give_back and dead_letter settle
    message: bytes       # the message as its producer (MinIO) wrote it
    attempt: int         # 1 the first time a message is taken; every requeue counts up
    last_error: str = ""  # why the previous delivery did not settle it


class EventSource(Protocol):
    format: str  # the message format, a key of functions/events.PARSERS

    def take(self, timeout: float) -> Delivery | None:
        """The next message, or None after `timeout` s; it stays taken until settled."""

    def ack(self, delivery: Delivery) -> None:
        """Done with it: its tasks are settled."""

    def give_back(self, delivery: Delivery, error: str) -> None:
        """Requeue it, counting this delivery and saying why it did not settle."""

    def dead_letter(self, delivery: Delivery, reason: str, deliveries: int | None = None) -> None:
        """Set it aside for good, with the reason; `deliveries` defaults to its attempt."""

    def serve(self, models: tuple[str, ...], shared: bool = True) -> None:
        """Take from these models' own lists too (they hold what other pools moved there);
        with shared=False, only from them."""

    def route(self, delivery: Delivery, model: str) -> None:
        """Move it, as it came, onto `model`'s own list, for the workers that serve that model."""

    def split(self, delivery: Delivery, messages: list[bytes]) -> None:
        """Replace it by these messages (one per record), to be taken one by one."""


class Leases(EventSource, Protocol):
    """How a source with per-worker in-flight lists gets abandoned messages back (functions/liveness.py)."""

    def in_flight(self) -> list[Delivery]:
        """What this worker has taken and not settled, as the source holds it."""

    def reclaim(self, worker_id: str, why: str) -> int:
        """Requeue everything `worker_id` has taken (a dead worker, or our own previous run)."""
