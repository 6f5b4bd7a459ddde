"""Each role's credentials against the real MinIO and Redis: what its job needs succeeds, the
rest fails with AccessDenied (MinIO) or NOPERM (Redis) (infra/ops/roles.py).

The users are the ones the session's bootstrap created (`maskflow up`'s, through Stack.bootstrap).
"""
from __future__ import annotations

import datetime as dt
import io
import uuid

import pytest
import redis
import requests
from minio import Minio
from minio.datatypes import PostPolicy
from minio.error import MinioAdminException, S3Error
from minio.notificationconfig import NotificationConfig

from maskflow.infra.ops import roles
from maskflow.infra.ops.processes import wait_until
from maskflow.infra.stores.keys import (DEAD_LETTER_KEY, RESULTS_STREAM, WORKERS_KEY, heartbeat_key, index_key,
                                        inflight_key, task_channel, task_key)
from maskflow.infra.stores.objects import ObjectStore
from maskflow.infra.stores.tasks import TaskStore
from maskflow.infra.wiring.connections import minio_admin, minio_client, redis_client

OTHER_BUCKET = "not-maskflows"


class Role:
    """One role's clients, built from the config its process gets."""

    def __init__(self, servers, role: str):
        self.cfg = servers.stack.service_config(role)
        self.s3: Minio = minio_client(self.cfg)
        self.r: redis.Redis = redis_client(self.cfg, timeout=5, connect_timeout=5)
        self.bucket = self.cfg.minio.bucket

    def put(self, key: str, bucket: str | None = None, **kw) -> None:
        self.s3.put_object(bucket or self.bucket, key, io.BytesIO(b"x"), 1, **kw)

    def get(self, key: str, bucket: str | None = None) -> bytes:
        response = self.s3.get_object(bucket or self.bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()


@pytest.fixture(scope="module")
def setup(servers):
    """Objects under every prefix, another bucket, and a client per role."""
    admin = minio_client(servers.cfg)
    if not admin.bucket_exists(OTHER_BUCKET):
        admin.make_bucket(OTHER_BUCKET)
    tag = uuid.uuid4().hex[:8]
    keys = {p: f"{p}lp-{tag}.jpg" for p in ("input/", "output/", "masks/")}
    for key in [*keys.values(), f"x-{tag}"]:
        admin.put_object(servers.cfg.minio.bucket, key, io.BytesIO(b"seed"), 4)
    admin.put_object(OTHER_BUCKET, f"x-{tag}", io.BytesIO(b"seed"), 4)
    yield {"keys": keys, "tag": tag, "api": Role(servers, "api"), "worker": Role(servers, "worker"),
           "webhooks": Role(servers, "webhooks")}
    # The uploads here gave events no test is waiting for: take them out once MinIO sent them.
    r, events = servers.redis(), servers.cfg.queue.events_key
    wait_until(lambda: not any(p.is_file() for p in servers.stack.event_store.rglob("*")),
               "MinIO's stored events sent", 30)
    for item in r.lrange(events, 0, -1):
        if f"lp-{tag}".encode() in item:
            r.lrem(events, 1, item)


def denied_s3(call) -> str:
    with pytest.raises(S3Error) as caught:
        call()
    assert caught.value.code == "AccessDenied", caught.value
    return caught.value.code


def denied_http(response: requests.Response) -> None:
    assert response.status_code == 403 and "<Code>AccessDenied</Code>" in response.text, response.text


def denied_redis(call) -> None:
    with pytest.raises(redis.exceptions.NoPermissionError, match="no permissions"):
        call()


# -- MinIO -------------------------------------------------------------------------------------
def test_api_minio_allowed(setup, servers):
    api, keys, tag = setup["api"], setup["keys"], setup["tag"]
    api.put(f"input/lp-{tag}-new.jpg")                               # its uploads
    assert api.get(keys["output/"]) == b"seed"                        # the results it signs
    assert api.s3.stat_object(api.bucket, keys["masks/"]).size == 4
    assert api.s3.bucket_exists(api.bucket)                           # readiness
    store = ObjectStore(api.cfg)
    assert requests.get(store.presigned_get(keys["output/"], 60), timeout=10).content == b"seed"
    url = store.presigned_put(f"input/lp-{tag}-put.jpg", 60, "image/jpeg", 1)
    assert requests.put(url, data=b"x", headers={"Content-Type": "image/jpeg"}, timeout=10).ok
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)
    post_url, fields = store.presigned_post(f"input/lp-{tag}-post.jpg", "image/jpeg", 100, expires)
    assert requests.post(post_url, data=fields, files={"file": b"x"}, timeout=10).status_code == 204


def test_api_minio_denied(setup, servers):
    api, keys, tag = setup["api"], setup["keys"], setup["tag"]
    bucket = api.bucket
    denials = [
        lambda: api.s3.remove_object(bucket, keys["output/"]),           # delete a result
        lambda: api.s3.remove_object(bucket, keys["input/"]),
        lambda: api.get(keys["input/"]),                                 # read an upload
        lambda: api.put(f"output/lp-{tag}-forged.jpg.png"),              # forge a result
        lambda: api.put(f"masks/lp-{tag}-forged.jpg.png"),
        lambda: api.put(f"elsewhere-{tag}"),
        lambda: list(api.s3.list_objects(bucket, recursive=True)),
        lambda: api.get(f"x-{tag}", bucket=OTHER_BUCKET),                # another bucket
        lambda: api.put(f"y-{tag}", bucket=OTHER_BUCKET),
        lambda: api.s3.make_bucket(f"lp-{tag}"),
        lambda: api.s3.remove_bucket(OTHER_BUCKET),
        lambda: api.s3.set_bucket_notification(bucket, NotificationConfig()),
        lambda: api.s3.get_bucket_policy(bucket),
    ]
    for call in denials:
        denied_s3(call)
    # A URL it signs is bounded by its policy, whatever the URL says.
    signed = ObjectStore(api.cfg)
    denied_http(requests.get(signed.presigned_get(keys["input/"], 60), timeout=10))
    put = signed.presigned_put(f"output/lp-{tag}-forged.png", 60, "image/png", 1)
    denied_http(requests.put(put, data=b"x", headers={"Content-Type": "image/png"}, timeout=10))
    policy = PostPolicy(bucket, dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1))
    policy.add_equals_condition("key", f"masks/lp-{tag}.png")
    fields = api.s3.presigned_post_policy(policy)
    denied_http(requests.post(f"http://{api.cfg.minio.endpoint}/{bucket}",
                              data={"key": f"masks/lp-{tag}.png", **fields}, files={"file": b"x"}, timeout=10))
    with pytest.raises(MinioAdminException, match="AccessDenied"):
        minio_admin(api.cfg).user_list()
    assert len(denials) + 4 >= 10


def test_worker_minio_allowed(setup, servers):
    worker, keys, tag = setup["worker"], setup["keys"], setup["tag"]
    assert worker.get(keys["input/"]) == b"seed"
    store = ObjectStore(worker.cfg)
    stat = worker.s3.stat_object(worker.bucket, keys["input/"])
    assert store.get(keys["input/"], etag=stat.etag).data == b"seed"     # If-Match
    for prefix in ("output/", "masks/"):
        key = f"{prefix}lp-{tag}-result.jpg.png"
        store.publish(key, b"v1", "image/png", {}, "01")                # If-None-Match
        store.publish(key, b"v2", "image/png", {}, "02")                # stat + If-Match
        assert worker.get(key) == b"v2"


def test_worker_minio_denied(setup, servers):
    worker, keys, tag = setup["worker"], setup["keys"], setup["tag"]
    bucket = worker.bucket
    denials = [
        lambda: worker.put(f"input/lp-{tag}-forged.jpg"),                # write an input
        lambda: worker.s3.remove_object(bucket, keys["input/"]),
        lambda: worker.s3.remove_object(bucket, keys["output/"]),
        lambda: worker.put(f"elsewhere-{tag}"),
        lambda: worker.get(f"x-{tag}"),
        lambda: worker.get(f"x-{tag}", bucket=OTHER_BUCKET),             # another bucket
        lambda: worker.put(f"y-{tag}", bucket=OTHER_BUCKET),
        lambda: list(worker.s3.list_objects(bucket, prefix="input/")),
        lambda: worker.s3.make_bucket(f"lp-{tag}"),
        lambda: worker.s3.remove_bucket(OTHER_BUCKET),
        lambda: worker.s3.set_bucket_notification(bucket, NotificationConfig()),
        lambda: worker.s3.get_bucket_notification(bucket),
    ]
    for call in denials:
        denied_s3(call)
    with pytest.raises(MinioAdminException, match="AccessDenied"):
        minio_admin(worker.cfg).user_add("intruder", "intruder-secret")
    assert len(denials) >= 10


def test_webhooks_minio_reads_results_only(setup, servers):
    hooks, keys, tag = setup["webhooks"], setup["keys"], setup["tag"]
    assert hooks.get(keys["output/"]) == b"seed" and hooks.get(keys["masks/"]) == b"seed"
    url = ObjectStore(hooks.cfg).presigned_get(keys["masks/"], 60)           # what it sends
    assert requests.get(url, timeout=10).content == b"seed"
    for call in [lambda: hooks.get(keys["input/"]), lambda: hooks.put(f"output/lp-{tag}-forged.png"),
                 lambda: hooks.put(f"input/lp-{tag}-forged.jpg"), lambda: hooks.get(f"x-{tag}"),
                 lambda: hooks.s3.remove_object(hooks.bucket, keys["output/"]),
                 lambda: list(hooks.s3.list_objects(hooks.bucket, prefix="output/"))]:
        denied_s3(call)


def test_webhooks_redis_allowed_and_denied(setup, servers):
    from maskflow.functions.webhooks import GROUP
    from maskflow.infra.stores.keys import WEBHOOKS_DUE, WEBHOOKS_STREAM
    from maskflow.infra.stores.results import Group, Schedule, count_delivery
    hooks, r_admin, cfg = setup["webhooks"].r, servers.redis(), setup["webhooks"].cfg
    task = uuid.uuid4().hex
    r_admin.hset(task_key(task), mapping={"status": "completed", "sequencer": "01"})
    group = Group(hooks, f"lp-{setup['tag']}", "c1", start="$", stream=WEBHOOKS_STREAM)  # XGROUP CREATE MKSTREAM
    entry = r_admin.xadd(WEBHOOKS_STREAM, {"task_id": task, "status": "completed"}).decode()
    assert [e.id for e in group.read(10)] == [entry]
    assert [e.id for e in group.reclaim(0, 10)] == [entry]
    group.ack(entry)
    Schedule(hooks).add(entry, 1.0), Schedule(hooks).first(), Schedule(hooks).own(entry)
    Schedule(hooks).attempt(entry)
    Schedule(hooks).forget(entry), count_delivery(hooks, "test", 0.1)
    # The outcome is announced on the task's channel, so API processes drop what they kept of it.
    assert TaskStore(hooks, cfg).record_callback(task, "01", "delivered", 1, "")
    assert r_admin.hget(task_key(task), "callback_status") == b"delivered"
    denials = [
        lambda: hooks.xadd(RESULTS_STREAM, {"task_id": "forged"}),           # forge a result
        lambda: hooks.xadd(WEBHOOKS_STREAM, {"task_id": "forged"}),          # or a delivery
        lambda: hooks.xtrim(WEBHOOKS_STREAM, 0), lambda: hooks.delete(WEBHOOKS_STREAM),
        lambda: hooks.xrange(RESULTS_STREAM, count=1),                      # every other task's result
        lambda: hooks.delete(task_key(task)), lambda: hooks.lpop(cfg.queue.events_key),
        lambda: hooks.get(index_key(f"input/lp-{setup['tag']}.jpg")),
        lambda: hooks.hset(heartbeat_key("forged"), "ready", "1"),
        lambda: hooks.publish("maskflow:other", "x"), lambda: hooks.flushall(),           # tasks' channels only
        lambda: hooks.keys("*"), lambda: hooks.config_get("*"), lambda: hooks.eval("return 1", 0),
        lambda: hooks.xgroup_destroy(WEBHOOKS_STREAM, GROUP),
    ]
    for call in denials:
        denied_redis(call)
    r_admin.delete(task_key(task)), r_admin.xgroup_destroy(WEBHOOKS_STREAM, f"lp-{setup['tag']}")
    r_admin.xdel(WEBHOOKS_STREAM, entry), r_admin.delete(WEBHOOKS_DUE)


def test_users_are_recreated_idempotently(servers):
    """A second bootstrap (a second `maskflow up`) leaves the same users working."""
    servers.stack.bootstrap()
    api = Role(servers, "api")
    assert api.s3.bucket_exists(api.cfg.minio.bucket)


# -- Redis -------------------------------------------------------------------------------------
def test_api_redis_allowed_and_denied(setup, servers):
    api, r_admin = setup["api"].r, servers.redis()
    cfg = setup["api"].cfg
    events = cfg.queue.events_key
    tasks = TaskStore(api, cfg)
    task = tasks.create_pending(uuid.uuid4().hex, f"input/lp-{setup['tag']}/a.jpg")   # EVALSHA + scripts
    assert tasks.get(task.task_id).status == "pending"
    assert tasks.fail_pending(task.task_id, "test")
    api.llen(events), api.llen(DEAD_LETTER_KEY), api.smembers(WORKERS_KEY), api.ping()
    pubsub = api.pubsub()
    pubsub.psubscribe(task_channel("*"))
    assert pubsub.get_message(timeout=2)["type"] == "psubscribe"
    pubsub.close()
    r_admin.rpush(events, b"not for the api")
    denials = [
        lambda: api.lpop(events), lambda: api.rpop(events),                      # pop events
        lambda: api.blmove(events, inflight_key("api"), 0.01, "LEFT", "RIGHT"),
        lambda: api.delete(task_key(task.task_id)),
        lambda: api.flushall(), lambda: api.flushdb(), lambda: api.config_get("*"),
        lambda: api.keys("*"), lambda: api.shutdown(nosave=True), lambda: api.acl_list(),
        lambda: api.get("elsewhere:key"),
        lambda: api.eval("return 1", 0),
        lambda: api.publish("another:channel", "x"),
        lambda: api.set(events + ":nobody", "x"),                            # break a queue
        lambda: api.hset(heartbeat_key("forged"), "ready", "1"),              # fake a live worker
        lambda: api.hset(inflight_key("w"), "x", "y"),
    ]
    for call in denials:
        denied_redis(call)
    denied_redis(lambda: _subscribe(api, "*"))
    assert r_admin.lrem(events, 1, b"not for the api") == 1
    # a script runs with its caller's rights: no way around the ACL through EVALSHA
    with pytest.raises(redis.exceptions.ResponseError, match="can't run this command"):
        api.evalsha(r_admin.script_load("return redis.call('DEL', KEYS[1])"), 1, task_key(task.task_id))
    assert r_admin.exists(task_key(task.task_id))
    assert "no permissions" in r_admin.acl_dryrun("api", "DEBUG", "SLEEP", "0").decode()


def test_worker_redis_allowed_and_denied(setup, servers):
    worker, r_admin = setup["worker"].r, servers.redis()
    events, inflight = setup["worker"].cfg.queue.events_key, inflight_key(f"lp-{setup['tag']}")
    r_admin.lpush(events, b"event")  # at the head: what the next BLMOVE takes
    assert worker.blmove(events, inflight, 1, "LEFT", "RIGHT") == b"event"
    assert worker.lrange(inflight, 0, -1) == [b"event"]
    assert worker.lrem(inflight, 1, b"event") == 1
    with worker.pipeline(transaction=True) as p:
        p.sadd(WORKERS_KEY, "lp-w").hset(heartbeat_key("lp-w"), "ready", "0").expire(heartbeat_key("lp-w"), 5)
        p.execute()
    worker.srem(WORKERS_KEY, "lp-w")
    worker.xadd(f"{RESULTS_STREAM}-lp", {"task": "x"}), worker.delete(f"{RESULTS_STREAM}-lp")  # issue 28's stream
    denials = [
        lambda: worker.flushall(), lambda: worker.flushdb(), lambda: worker.config_get("*"),
        lambda: worker.config_set("maxmemory", "1"), lambda: worker.keys("*"),
        lambda: worker.shutdown(nosave=True), lambda: worker.acl_list(), lambda: worker.swapdb(0, 1),
        lambda: worker.get("elsewhere:key"), lambda: worker.set("elsewhere:key", "x"),
        lambda: worker.rpush("elsewhere:list", "x"), lambda: worker.publish("another:channel", "x"),
        lambda: worker.script_flush(), lambda: worker.client_list(),
    ]
    for call in denials:
        denied_redis(call)
    denied_redis(lambda: _subscribe(worker, task_channel("*")))
    assert "no permissions" in r_admin.acl_dryrun("worker", "DEBUG", "SLEEP", "0").decode()


def test_minio_target_redis_allowed_and_denied(setup, servers):
    r_admin = servers.redis()
    events = servers.cfg.queue.events_key
    password = servers.stack.credentials.redis_password("minio")
    target = redis.Redis(port=servers.cfg.redis.port, username="minio", password=password)
    # exactly what MinIO's Redis target sends: AUTH user password, CLIENT SETNAME, PING, TYPE, RPUSH
    target.client_setname("MinIO"), target.ping()
    assert target.type(events) in (b"none", b"list")
    before = r_admin.llen(events)
    target.rpush(events, b"event from minio")
    r_admin.lrem(events, 1, b"event from minio")
    assert r_admin.llen(events) == before
    task = uuid.uuid4().hex
    r_admin.hset(task_key(task), "status", "pending")
    denials = [
        lambda: target.hgetall(task_key(task)), lambda: target.lpop(events),
        lambda: target.lrange(events, 0, -1), lambda: target.delete(events),
        lambda: target.rpush(task_key(task), "x"), lambda: target.get(index_key("input/x")),
        lambda: target.flushall(), lambda: target.config_get("*"), lambda: target.keys("*"),
        lambda: target.publish(task_channel("x"), "completed"), lambda: target.acl_list(),
        lambda: target.eval("return 1", 0), lambda: target.shutdown(nosave=True),
    ]
    for call in denials:
        denied_redis(call)
    r_admin.delete(task_key(task))


def test_no_default_user(servers):
    anonymous = redis.Redis(port=servers.cfg.redis.port)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()
    assert "default" in servers.redis().acl_users() and not servers.redis().acl_getuser("default")["enabled"]
    assert set(servers.redis().acl_users()) == {"default", *roles.REDIS_ROLES}


def _subscribe(r: redis.Redis, pattern: str) -> None:
    pubsub = r.pubsub()
    try:
        pubsub.psubscribe(pattern)
        pubsub.get_message(timeout=2)
    finally:
        pubsub.close()
