from __future__ import annotations

import pytest

from maskflow.infra.wiring.config import ConfigError, env_for, load_config


def test_defaults_are_the_original_design():
    cfg = load_config(env={})
    assert (cfg.redis.host, cfg.redis.port, cfg.redis.db) == ("127.0.0.1", 6379, 0)
    assert cfg.minio.endpoint == "127.0.0.1:9000"
    assert (cfg.minio.access_key, cfg.minio.secret_key) == ("minioadmin", "minioadmin")
    assert cfg.minio.bucket == "ai-segmentation"
    assert cfg.model.path == "models/segmentation.onnx" and cfg.model.input_size == (256, 256)
    assert (cfg.task.timeout, cfg.task.poll_interval, cfg.task.max_polls) == (300, 2, 150)
    assert cfg.api.port == 8000


def test_file_then_environment_override(tmp_path):
    path = tmp_path / "maskflow.toml"
    path.write_text('[redis]\nport = 7000\nhost = "127.0.0.2"\n[model]\ninput_size = [320, 320]\n')
    cfg = load_config(path, env={"MASKFLOW_REDIS_PORT": "7001"})
    assert cfg.redis.port == 7001 and cfg.redis.host == "127.0.0.2"
    assert cfg.model.input_size == (320, 320)


def test_environment_names_every_key():
    cfg = load_config(env={"MASKFLOW_MINIO_ACCESS_KEY": "me", "MASKFLOW_MODEL_INPUT_SIZE": "320,320",
                           "MASKFLOW_MINIO_SECURE": "true"})
    assert cfg.minio.access_key == "me" and cfg.model.input_size == (320, 320) and cfg.minio.secure
    # env_for round-trips every key through the environment
    assert load_config(env=env_for(cfg)) == cfg


@pytest.mark.parametrize("env, key", [
    ({"MASKFLOW_REDIS_PROT": "1"}, "redis.prot"),
    ({"MASKFLOW_TASK_TIMEOUT": "soon"}, "task.timeout"),
    ({"MASKFLOW_TASK_TIMEOUT": "0"}, "task.timeout"),
    ({"MASKFLOW_API_PORT": "70000"}, "api.port"),
    ({"MASKFLOW_MODEL_INPUT_SIZE": "256"}, "model.input_size"),
    ({"MASKFLOW_MINIO_ENDPOINT": "no-port"}, "minio.endpoint"),
    ({"MASKFLOW_MINIO_SECURE": "maybe"}, "minio.secure"),
    ({"MASKFLOW_WORKER_MAX_DELIVERIES": "0"}, "worker.max_deliveries"),
    ({"MASKFLOW_QUEUE_DEAD_LETTER_MAX": "0"}, "queue.dead_letter_max"),
])
def test_bad_values_name_the_key(env, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(env=env)


def test_unknown_section_in_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[redsi]\nport = 1\n")
    with pytest.raises(ConfigError, match="redsi"):
        load_config(path, env={})


def test_sentinels_from_file_and_environment(tmp_path):
    assert load_config(env={}).redis.sentinels == ()
    path = tmp_path / "maskflow.toml"
    path.write_text('[redis]\nsentinels = ["10.0.0.5:26379", "sentinel-b:26380"]\nmaster_name = "mf"\n')
    cfg = load_config(path, env={})
    assert cfg.redis.sentinels == ("10.0.0.5:26379", "sentinel-b:26380")
    assert cfg.redis.master_name == "mf"
    env = {"MASKFLOW_REDIS_SENTINELS": "h1:26379, h2:26379,[::1]:26379"}
    assert load_config(env=env).redis.sentinels == ("h1:26379", "h2:26379", "[::1]:26379")
    assert load_config(env={"MASKFLOW_REDIS_SENTINELS": ""}).redis.sentinels == ()
    # env_for round-trips the list, the empty one included
    for cfg in (load_config(path, env={}), load_config(env={})):
        assert load_config(env=env_for(cfg)) == cfg


@pytest.mark.parametrize("env", [
    {"MASKFLOW_REDIS_SENTINELS": "h1"},
    {"MASKFLOW_REDIS_SENTINELS": "h1:26379,,h2:26379"},
    {"MASKFLOW_REDIS_SENTINELS": "h1:0"},
    {"MASKFLOW_REDIS_SENTINELS": ":26379"},
    {"MASKFLOW_REDIS_SENTINELS": "h1:26379", "MASKFLOW_REDIS_MASTER_NAME": ""},
    {"MASKFLOW_REDIS_SENTINELS": "h1:26379", "MASKFLOW_REDIS_MASTER_NAME": "my master"},
])
def test_bad_sentinels_name_the_key(env):
    with pytest.raises(ConfigError, match=r"redis\.(sentinels|master_name)"):
        load_config(env=env)


def test_sentinels_in_file_must_be_strings(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[redis]\nsentinels = [26379]\n")
    with pytest.raises(ConfigError, match=r"redis\.sentinels"):
        load_config(path, env={})
