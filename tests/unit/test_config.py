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


# -- credentials from files (MASKFLOW_<SECTION>_<KEY>_FILE) -----------------------------------
def test_every_secret_can_come_from_a_file(tmp_path):
    from maskflow.infra.wiring.config import SECRET_KEYS
    assert set(SECRET_KEYS) == {"redis.password", "redis.sentinel_password", "minio.secret_key",
                                "api.token", "api.tokens", "webhook.secret"}
    env = {}
    for key in SECRET_KEYS:
        (tmp_path / key).write_text(f"  {key.replace('.', '-')}-value\n")  # whitespace around: stripped
        env[f"MASKFLOW_{key.replace('.', '_').upper()}_FILE"] = str(tmp_path / key)
    cfg = load_config(env=env)
    assert cfg.redis.password == "redis-password-value" and cfg.minio.secret_key == "minio-secret_key-value"
    assert cfg.api.tokens == ("api-tokens-value",) and cfg.api.token == "api-token-value"


def test_a_tokens_file_holds_one_token_per_line(tmp_path):
    (tmp_path / "tokens").write_text("# rotated 2026-01\nnew-token\n\n old-token \n")
    cfg = load_config(env={"MASKFLOW_API_TOKENS_FILE": str(tmp_path / "tokens"), "MASKFLOW_API_TOKEN": "t0"})
    assert cfg.api_tokens == ("t0", "new-token", "old-token")


def test_secrets_never_appear_in_reprs_or_messages(tmp_path):
    cfg = load_config(env={"MASKFLOW_REDIS_PASSWORD": "pw-123456", "MASKFLOW_MINIO_SECRET_KEY": "sk-123456",
                           "MASKFLOW_API_TOKENS": "tok-123456"})
    assert not any(s in repr(cfg) for s in ("pw-123456", "sk-123456", "tok-123456"))
    (tmp_path / "bad").write_text("tok,en-123456\n")
    with pytest.raises(ConfigError) as caught:
        load_config(env={"MASKFLOW_API_TOKENS_FILE": str(tmp_path / "bad")})
    assert "123456" not in str(caught.value) and "api.tokens" in str(caught.value)


@pytest.mark.parametrize("env, message", [
    ({"MASKFLOW_REDIS_PASSWORD": "a", "MASKFLOW_REDIS_PASSWORD_FILE": "/x"}, "not both"),
    ({"MASKFLOW_REDIS_PORT_FILE": "/x"}, "cannot be read from a file"),
    ({"MASKFLOW_MINIO_SECRET_KEY_FILE": "/no/such/file"}, "cannot read /no/such/file"),
    ({"MASKFLOW_REDIS_CA_FILE": "/no/such/ca.pem"}, "redis.ca_file: no such file"),
])
def test_file_settings_fail_with_the_reason(env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(env=env)


def test_env_for_passes_secrets_as_files(tmp_path):
    (tmp_path / "pw").write_text("from-file")
    cfg = load_config(env={"MASKFLOW_REDIS_PASSWORD": "from-file", "MASKFLOW_REDIS_USERNAME": "api"})
    env = env_for(cfg, {"redis.password": tmp_path / "pw"})
    assert "MASKFLOW_REDIS_PASSWORD" not in env and env["MASKFLOW_REDIS_PASSWORD_FILE"] == str(tmp_path / "pw")
    assert "from-file" not in "".join(env.values())
    assert load_config(env=env) == cfg
