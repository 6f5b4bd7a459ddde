"""redis_client builds a plain client, or a Sentinel-managed one, with the caller's options."""
from __future__ import annotations

import pytest
import redis
from redis.sentinel import SentinelConnectionPool

from maskflow.infra.wiring.config import load_config
from maskflow.infra.wiring.connections import redis_client


def test_plain_redis_by_default():
    r = redis_client(load_config(env={"MASKFLOW_REDIS_PORT": "6390"}), timeout=3, connect_timeout=2)
    kwargs = r.connection_pool.connection_kwargs
    assert not isinstance(r.connection_pool, SentinelConnectionPool)
    assert (kwargs["host"], kwargs["port"], kwargs["socket_timeout"]) == ("127.0.0.1", 6390, 3)


def test_sentinel_master_with_the_same_options():
    cfg = load_config(env={"MASKFLOW_REDIS_SENTINELS": "10.9.0.1:26379,10.9.0.2:26380",
                           "MASKFLOW_REDIS_MASTER_NAME": "mf", "MASKFLOW_REDIS_DB": "2"})
    r = redis_client(cfg, timeout=5, connect_timeout=2, health_check_interval=30, retries=1)
    pool = r.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.is_master
    assert pool.service_name == "mf"
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["socket_timeout"], kwargs["socket_connect_timeout"],
            kwargs["health_check_interval"]) == (2, 5, 2, 30)
    assert kwargs["retry"].get_retries() == 1
    sentinels = pool.sentinel_manager.sentinels
    assert [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
            for s in sentinels] == [("10.9.0.1", 26379), ("10.9.0.2", 26380)]
    # the Sentinels get the same timeouts, and no retries: the next Sentinel is asked instead
    for s in sentinels:
        skw = s.connection_pool.connection_kwargs
        assert (skw["socket_timeout"], skw["socket_connect_timeout"]) == (5, 2)
        assert skw["retry"].get_retries() == 0


def test_no_sentinel_answers_is_a_connection_error():
    # what the worker and the API already treat as Redis being away (retry, 503)
    cfg = load_config(env={"MASKFLOW_REDIS_SENTINELS": "127.0.0.1:1"})
    r = redis_client(cfg, timeout=1, connect_timeout=1, retries=0)
    with pytest.raises(redis.ConnectionError, match="No master found for 'maskflow'"):
        r.ping()
