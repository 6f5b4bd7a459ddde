"""The webhook dispatcher against the real Redis and MinIO and a real HTTP receiver on
127.0.0.1 (allow-listed): signed, at least once, bounded; and the SSRF guard's refusals."""
from __future__ import annotations

import contextlib
import json
import threading
import time

import pytest

from receiver import HANG, receiving
from maskflow.functions.webhooks import GROUP, Dispatcher
from maskflow.infra.domain import signatures
from maskflow.infra.ops.processes import wait_until
from maskflow.infra.stores import results
from maskflow.infra.stores.keys import RESULTS_STREAM, WEBHOOKS_STREAM
from maskflow.infra.stores.results import Group
from maskflow.infra.stores.task_view import task_body
from maskflow.infra.stores.tasks import TaskStore
from maskflow.infra.wiring import outbound
from maskflow.infra.wiring.config import replace

SECRET = "test-webhook-secret"
OUT = {"output": "output/w/a.jpg.png", "mask": "masks/w/a.jpg.png"}


def hook_cfg(servers, **webhook):
    return replace(servers.cfg, webhook={"secret": SECRET, "allow_hosts": ("127.0.0.1",), "allow_insecure": True,
                                         "backoff": 0.05, "backoff_max": 0.2, "timeout": 2.0, **webhook})


@contextlib.contextmanager
def dispatching(cfg, r, consumer="d1", **kwargs):
    dispatcher = Dispatcher(cfg, r, consumer, **kwargs)
    thread = threading.Thread(target=dispatcher.run, daemon=True)
    thread.start()
    try:
        yield dispatcher
    finally:
        dispatcher.stopping.set()
        thread.join(timeout=30)
        assert not thread.is_alive()


def finish(cfg, r, task_id: str, callback: str, ok: bool = True) -> TaskStore:
    store = TaskStore(r, cfg)
    store.begin(task_id, f"input/w/{task_id}.jpg", "etag1", "0A", "w", "run")
    store.set_callback(task_id, callback)
    assert store.complete(task_id, "0A", OUT, input_key=f"input/w/{task_id}.jpg") if ok else \
        store.fail(task_id, "0A", "not an image", input_key=f"input/w/{task_id}.jpg")
    return store


def callback_of(store: TaskStore, task_id: str, settled=("delivered", "failed")) -> dict | None:
    task = store.get(task_id)
    return task.callback if task.callback and task.callback["status"] in settled else None


def test_a_delivery_is_signed_and_its_body_is_the_tasks(servers, clean_redis, objects):
    cfg = hook_cfg(servers)
    with receiving() as receiver, dispatching(cfg, clean_redis):
        store = finish(cfg, clean_redis, "signed", receiver.url)
        (got,) = receiver.wait_for(1)
        callback = wait_until(lambda: callback_of(store, "signed"), "the delivery recorded", 30)
    assert signatures.verify(SECRET, got.body, got.headers[signatures.HEADER])
    assert not signatures.verify("another secret", got.body, got.headers[signatures.HEADER])
    assert not signatures.verify(SECRET, got.body + b" ", got.headers[signatures.HEADER])
    ((entry_id, _fields),) = clean_redis.xrange(WEBHOOKS_STREAM)
    assert got.headers[signatures.DELIVERY_HEADER] == entry_id.decode()
    body = json.loads(got.body)
    expected = task_body(store.get("signed"), objects, cfg.api.presign_expiry)
    expected["callback"] = {"status": "pending", "attempts": 0, "last_error": None}  # as it was when sent
    assert {k: v for k, v in body.items() if k != "result"} == {k: v for k, v in expected.items() if k != "result"}
    assert body["status"] == "completed" and all(body["result"].values())
    assert callback == {"status": "delivered", "attempts": 1, "last_error": None}
    assert clean_redis.xpending(WEBHOOKS_STREAM, GROUP)["pending"] == 0
    stats = results.delivery_stats(clean_redis)
    assert stats["outcome:delivered"] == 1 and stats["latency_count"] == 1


def test_three_failures_then_success_is_delivered_exactly_once(servers, clean_redis):
    cfg = hook_cfg(servers)
    with receiving([500, 503, 500], default=200) as receiver, dispatching(cfg, clean_redis):
        store = finish(cfg, clean_redis, "flaky", receiver.url, ok=False)
        callback = wait_until(lambda: callback_of(store, "flaky"), "the delivery recorded", 30)
        got = receiver.wait_for(4)
    assert receiver.answered == [500, 503, 500, 200]
    assert len({r.headers[signatures.DELIVERY_HEADER] for r in got}) == 1  # one delivery, retried
    assert [r.headers["Maskflow-Attempt"] for r in got] == ["1", "2", "3", "4"]
    assert callback == {"status": "delivered", "attempts": 4, "last_error": None}
    assert json.loads(got[-1].body)["error"] == "not an image"
    stats = results.delivery_stats(clean_redis)
    assert stats["outcome:retry"] == 3 and stats["outcome:delivered"] == 1
    assert len(receiver.received) == 4  # nothing after the success


def test_a_receiver_that_never_answers_is_bounded(servers, clean_redis):
    cfg = hook_cfg(servers, timeout=0.3, max_attempts=3)
    started = time.monotonic()
    with receiving(default=HANG) as receiver, dispatching(cfg, clean_redis):
        store = finish(cfg, clean_redis, "silent", receiver.url)
        callback = wait_until(lambda: callback_of(store, "silent"), "the delivery given up", 30)
        assert len(receiver.received) == 3
    assert callback["status"] == "failed" and callback["attempts"] == 3
    assert "gave up after 3 attempts" in callback["last_error"] and "timeout" in callback["last_error"]
    assert time.monotonic() - started < 20
    assert clean_redis.xpending(WEBHOOKS_STREAM, GROUP)["pending"] == 0
    assert results.delivery_stats(clean_redis)["outcome:failed"] == 1


def test_410_stops_the_retries(servers, clean_redis):
    cfg = hook_cfg(servers)
    with receiving(default=410) as receiver, dispatching(cfg, clean_redis):
        store = finish(cfg, clean_redis, "gone", receiver.url)
        callback = wait_until(lambda: callback_of(store, "gone"), "the delivery given up", 30)
    assert len(receiver.received) == 1
    assert callback["status"] == "failed" and "410" in callback["last_error"]
    assert results.delivery_stats(clean_redis)["outcome:gone"] == 1


def test_a_redirect_to_a_private_address_is_refused(servers, clean_redis, monkeypatch):
    cfg = hook_cfg(servers)
    connects = spy_connections(monkeypatch)
    with receiving(default=302, headers={"Location": "http://10.0.0.1/steal"}) as receiver, \
            dispatching(cfg, clean_redis):
        store = finish(cfg, clean_redis, "redirected", receiver.url)
        callback = wait_until(lambda: callback_of(store, "redirected"), "the delivery refused", 30)
    assert len(receiver.received) == 1
    assert callback["status"] == "failed" and "redirect" in callback["last_error"]
    assert [address for address, _port in connects] == ["127.0.0.1"]  # never 10.0.0.1
    assert results.delivery_stats(clean_redis)["outcome:refused"] == 1


def test_only_tasks_with_a_callback_reach_the_dispatcher_and_a_dead_consumers_are_reclaimed(servers, clean_redis):
    cfg = hook_cfg(servers)
    with receiving() as receiver:
        store = TaskStore(clean_redis, cfg)
        store.begin("plain", "input/w/plain.jpg", "e", "01", "w", "r")
        store.complete("plain", "01", OUT)
        finish(cfg, clean_redis, "orphan", receiver.url)
        assert clean_redis.xlen(RESULTS_STREAM) == 2
        dead = Group(clean_redis, GROUP, "dead", stream=WEBHOOKS_STREAM)
        (taken,) = dead.read(10)  # read, then this consumer "crashes" before its ack
        assert taken.task_id == "orphan"
        with dispatching(cfg, clean_redis, "d2", reclaim_idle=0.0):
            (got,) = receiver.wait_for(1)
            wait_until(lambda: callback_of(store, "orphan"), "the reclaimed delivery recorded", 30)
            wait_until(lambda: clean_redis.xpending(WEBHOOKS_STREAM, GROUP)["pending"] == 0, "all acknowledged", 30)
    assert json.loads(got.body)["task_id"] == "orphan"


# -- the SSRF guard ------------------------------------------------------------------------------
def spy_connections(monkeypatch) -> list:
    made = []
    real = outbound.socket.create_connection

    def recording(address, *args, **kwargs):
        made.append(address)
        return real(address, *args, **kwargs)
    monkeypatch.setattr(outbound.socket, "create_connection", recording)
    return made



@pytest.mark.parametrize("url", ["https://10.0.0.1/h", "https://127.0.0.2/h", "https://[::1]/h",
                                 "https://169.254.169.254/latest/meta-data", "https://[fd00::1]/h",
                                 "https://[::ffff:10.0.0.1]/h", "https://100.64.0.1/h", "https://224.0.0.1/h",
                                 "https://0.0.0.0/h", "https://localhost/h", "https://private.example/h"])
def test_private_addresses_are_refused_without_connecting(servers, monkeypatch, url):
    policy = replace(servers.cfg, webhook={"secret": SECRET}).webhook  # nothing allow-listed
    resolve = outbound.resolve
    monkeypatch.setattr(outbound, "resolve", lambda host, port: ["10.9.8.7"] if host == "private.example"
                        else resolve(host, port))
    connects = spy_connections(monkeypatch)
    with pytest.raises((outbound.Refused, outbound.BadCallback), match="not a public address|is not public"):
        outbound.post(url, b"{}", {}, policy)
    assert connects == []


def test_intake_checks_the_url(servers):
    policy = replace(servers.cfg, webhook={"secret": SECRET}).webhook
    for bad, why in [("http://example.com/h", "https"), ("ftp://example.com/", "https"),
                     ("https://user:pw@example.com/", "credentials"), ("https:///nohost", "no host"),
                     ("https://example.com/" + "a" * 2000, "longer"), ("https://10.1.1.1/", "not public"),
                     ("https://example.com/a b", "spaces")]:
        with pytest.raises(outbound.BadCallback, match=why):
            outbound.check_url(bad, policy)
    outbound.check_url("https://example.com:8443/hooks?x=1", policy)
    outbound.check_url("http://127.0.0.1:9/h", replace(servers.cfg, webhook={
        "allow_insecure": True, "allow_hosts": ("127.0.0.1",)}).webhook)
    assert outbound.callback_for("", "input/p/x.jpg", replace(servers.cfg, webhook={
        "by_prefix": {"input/p/": "https://example.com/p"}}).webhook) == "https://example.com/p"
