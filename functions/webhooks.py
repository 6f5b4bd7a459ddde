"""`python -m maskflow.functions.webhooks`: the webhook dispatcher.

It reads the webhooks stream, where each finished task that has a callback_url has its entry
(and no other task has one), as the consumer group ``webhooks``, and POSTs each task to its
callback_url, signed (infra/domain/signatures.py).  At least once, bounded:

* an entry is acknowledged (XACK) only once its delivery succeeded or gave up, so a
  dispatcher that dies leaves it pending, and a live one claims it (XAUTOCLAIM) after
  RECLAIM_IDLE_S; every attempt first re-claims its entry, so a live attempt is never stolen;
* a failed attempt is retried after tenacity's exponential backoff with jitter, kept as the
  entry's time in a sorted set (infra/stores/results.py), so a waiting retry holds no thread;
  at most `webhook.max_attempts` attempts within `webhook.max_age` of the task's transition;
* a 410 answer, a refused address (infra/wiring/outbound.py) or a redirect stops at once.

The outcome is recorded on the task (``callback`` in ``GET /api/v1/tasks/{id}``) and counted
for /metrics.  The body is the task as ``GET /api/v1/tasks/{id}`` showed it at its transition.
"""
from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import redis
from tenacity import RetryCallState, wait_exponential, wait_random

from maskflow.infra.domain import signatures
from maskflow.infra.stores import results
from maskflow.infra.stores.keys import WEBHOOKS_STREAM
from maskflow.infra.stores.objects import ObjectStore
from maskflow.infra.stores.results import Entry, Group, Schedule
from maskflow.infra.stores.task_view import task_body
from maskflow.infra.stores.tasks import TaskStore, task_from_fields
from maskflow.infra.wiring import outbound
from maskflow.infra.wiring.config import Config, ConfigError, load_config
from maskflow.infra.wiring.connections import redis_client, tls_check

log = logging.getLogger("maskflow.webhooks")

GROUP = "webhooks"
RECLAIM_IDLE_S = 120.0   # an entry pending this long with a silent consumer is claimed
RECLAIM_EVERY_S = 10.0
READ_COUNT = 100


@dataclass(frozen=True)
class Verdict:
    """What one attempt came to: delivered, retry (after `wait`), or given up."""
    outcome: str          # delivered | retry | failed | gone | refused | expired
    error: str = ""
    wait: float = 0.0


def backoff(cfg: Config):
    """Seconds before attempt n + 1, by tenacity: exponential with jitter, capped."""
    hook = cfg.webhook
    policy = wait_exponential(multiplier=hook.backoff, max=hook.backoff_max) + wait_random(0, hook.backoff)

    def wait(attempt: int) -> float:
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        return float(policy(state))
    return wait


@dataclass(frozen=True)
class Sent:
    status: int | None  # the answer's; None: no answer, or refused
    error: str = ""
    refused: bool = False  # not sent, and never will be: an address or a redirect refused


def judge(sent: Sent, attempt: int, age: float, cfg: Config, wait: float) -> Verdict:
    """The verdict on an attempt."""
    answer_status, error = sent.status, sent.error
    if sent.refused:
        return Verdict("refused", error)
    if answer_status is not None and 200 <= answer_status < 300:
        return Verdict("delivered")
    if answer_status == 410:
        return Verdict("gone", "the receiver answered 410 Gone: not retried")
    if answer_status is not None:
        error = f"the receiver answered {answer_status}"
    if attempt >= cfg.webhook.max_attempts:
        return Verdict("failed", f"gave up after {attempt} attempts: {error}")
    if age + wait > cfg.webhook.max_age:
        return Verdict("failed", f"gave up after {attempt} attempts, {cfg.webhook.max_age} s after the "
                                 f"task finished: {error}")
    return Verdict("retry", error, wait)


class Dispatcher:
    def __init__(self, cfg: Config, r: redis.Redis, consumer: str, objects: ObjectStore | None = None,
                 reclaim_idle: float = RECLAIM_IDLE_S):
        self.cfg, self.r, self.consumer = cfg, r, consumer
        self.group = Group(r, GROUP, consumer, stream=WEBHOOKS_STREAM)
        self.schedule = Schedule(r)
        self.tasks = TaskStore(r, cfg)
        self.objects = objects or ObjectStore(cfg)
        self.wait_for = backoff(cfg)
        self.reclaim_idle = reclaim_idle
        self.stopping = threading.Event()
        self._slots = threading.BoundedSemaphore(cfg.webhook.concurrency)
        self._pool = ThreadPoolExecutor(cfg.webhook.concurrency, thread_name_prefix="webhook")

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> None:
        next_reclaim = 0.0
        try:
            while not self.stopping.is_set():
                now = time.time()
                if now >= next_reclaim:
                    self._take(self.group.reclaim(int(self.reclaim_idle * 1000), READ_COUNT), reclaimed=True)
                    next_reclaim = now + RECLAIM_EVERY_S
                next_due = self._start_due()
                until = 1.0 if next_due is None else next_due - time.time()
                self._take(self.group.read(READ_COUNT, block_ms=int(1000 * min(1.0, max(0.01, until)))))
        finally:
            self._pool.shutdown(wait=True)

    def _take(self, entries: list[Entry], reclaimed: bool = False) -> None:
        """New (or reclaimed) entries: due now."""
        for entry in entries:
            self.schedule.add(entry.id, time.time(), keep=reclaimed)

    def _start_due(self) -> float | None:
        """Start the due attempts while a slot is free; when the first one left is due (None:
        nothing scheduled).  One query of the schedule while nothing is due."""
        while not self.stopping.is_set():
            first = self.schedule.first()
            if first is None:
                return None
            entry_id, when = first
            if when > time.time() or not self._slots.acquire(blocking=False):
                return when
            if not self.schedule.own(entry_id):  # another dispatcher took it first
                self._slots.release()
                continue
            self._pool.submit(self._attempt_and_release, entry_id)
        return None

    def _attempt_and_release(self, entry_id: str) -> None:
        try:
            self.attempt(entry_id)
        except Exception:  # noqa: BLE001 - Redis gone mid-attempt: the entry stays pending, reclaimed later
            log.exception("delivery of %s interrupted; it stays pending", entry_id)
        finally:
            self._slots.release()

    # -- one attempt -----------------------------------------------------------------------------
    def attempt(self, entry_id: str) -> Verdict:
        # ours again, idle 0: no other dispatcher reclaims an entry while its attempt runs
        claimed = self.r.xclaim(WEBHOOKS_STREAM, GROUP, self.consumer, 0, [entry_id])
        if not claimed or claimed[0][1] is None:  # trimmed from the stream (MAXLEN) meanwhile
            self.group.ack(entry_id)
            self.schedule.forget(entry_id)
            results.count_delivery(self.r, "expired")
            return Verdict("expired", "the entry left the stream before it was delivered")
        entry = Entry(entry_id, {k.decode(): v.decode() for k, v in claimed[0][1].items()})
        attempt = self.schedule.attempt(entry_id)
        age = time.time() - entry.written_at
        if age > self.cfg.webhook.max_age:
            verdict = Verdict("expired", f"not delivered within {self.cfg.webhook.max_age} s of the "
                                         f"task finishing")
        else:
            verdict = judge(self.send(entry, attempt), attempt, age, self.cfg, self.wait_for(attempt))
        self._settle(entry, attempt, verdict)
        return verdict

    def send(self, entry: Entry, attempt: int) -> Sent:
        """POST the entry's task, signed."""
        task = task_from_fields(entry.fields)
        body = json.dumps(task_body(task, self.objects, self.cfg.api.presign_expiry),
                          separators=(",", ":")).encode()
        headers = {signatures.HEADER: signatures.sign(self.cfg.webhook.secret, body),
                   signatures.DELIVERY_HEADER: entry.id, "Maskflow-Attempt": str(attempt)}
        try:
            answer = outbound.post(entry.fields["callback_url"], body, headers, self.cfg.webhook)
        except (outbound.Refused, outbound.BadCallback) as exc:
            return Sent(None, f"refused: {exc}", refused=True)
        except (OSError, http.client.HTTPException) as exc:
            return Sent(None, _describe(exc))
        return Sent(answer.status)

    def _settle(self, entry: Entry, attempt: int, verdict: Verdict) -> None:
        outcome, error = verdict.outcome, verdict.error
        if outcome == "retry":
            self.schedule.add(entry.id, time.time() + verdict.wait)
            status = "retrying"
        else:
            status = "delivered" if outcome == "delivered" else "failed"
        self.tasks.record_callback(entry.task_id, entry.fields.get("sequencer", ""), status, attempt, error)
        results.count_delivery(self.r, outcome, time.time() - entry.written_at if outcome == "delivered" else None)
        if outcome != "retry":
            self.group.ack(entry.id)
            self.schedule.forget(entry.id)
        log_at = logging.INFO if outcome in ("delivered", "retry") else logging.WARNING
        log.log(log_at, "task %s: webhook %s (attempt %d)%s", entry.task_id, outcome, attempt,
                f": {error}" if error else "")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "no answer within the timeout"
    return f"{type(exc).__name__}: {exc}"[:300]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maskflow.functions.webhooks",
                                     description="POST finished tasks to their callback URLs, signed.")
    parser.add_argument("--id", default=f"{socket.gethostname()}:{os.getpid()}",
                        help="consumer name in the group, unique per live process (default host:pid)")
    parser.add_argument("--config", help="TOML config file (default: $MASKFLOW_CONFIG)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s webhooks {args.id} %(levelname)s %(message)s")
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"maskflow webhooks: {exc}", file=sys.stderr)
        return 2
    problem = tls_check(cfg) or ("" if cfg.webhook.secret else "webhook.secret is empty: nothing could be signed")
    if problem:
        print(f"maskflow webhooks: {problem}", file=sys.stderr)
        return 2
    dispatcher = Dispatcher(cfg, redis_client(cfg, timeout=10, connect_timeout=5, health_check_interval=15), args.id)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: dispatcher.stopping.set())
    log.info("dispatching webhooks as %s", args.id)
    dispatcher.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
