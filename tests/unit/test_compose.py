"""docker-compose.yml and the Dockerfiles agree with the config and the notify file, and build from
public base images by default (tests/containers builds and runs them under Docker).

The credentials are made as an operator makes them (`python -m maskflow.infra.ops.credentials`),
in a folder of the test's, and each service's `secrets:` are resolved to those files.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from maskflow.infra.domain.catalog import CATALOG
from maskflow.infra.ops import roles
from maskflow.infra.ops.bootstrap import load_rules, notify_env, read_users, redis_target_arn
from maskflow.infra.ops.install import MC, MINIO
from maskflow.infra.wiring.config import load_config
from maskflow.infra.wiring.settings import StackConfig

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
SECRETS = tempfile.mkdtemp(prefix="maskflow-compose-secrets-")
atexit.register(shutil.rmtree, SECRETS, True)
_made = subprocess.run([sys.executable, "-m", "maskflow.infra.ops.credentials", f"{SECRETS}/secrets"],
                       env={k: v for k, v in os.environ.items() if not k.startswith("MASKFLOW_")},
                       capture_output=True, text=True, check=True)


def mounted(service: str) -> dict[str, Path]:
    """What the service's `secrets:` put where: the path in the container -> the file made here."""
    out = {}
    for entry in SERVICES[service].get("secrets", []):
        source, target = (entry, entry) if isinstance(entry, str) else (entry["source"], entry["target"])
        target = target if target.startswith("/") else f"/run/secrets/{target}"
        out[target] = Path(SECRETS) / with_defaults(COMPOSE["secrets"][source]["file"])
    return out


def service_env(service: str) -> dict[str, str]:
    """The service's environment as its container sees it, files mounted where the paths say."""
    files = mounted(service)
    return {k: str(files.get(v, v)) for k, v in SERVICES[service]["environment"].items()}


DOCKER = REPO / "infra/ops/docker"


def with_defaults(value: str) -> str:
    """A compose value as it is with an empty .env: each ${VAR:-default} replaced by its default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def stages(dockerfile: str) -> dict[str, str]:
    """Each named stage's text, from its FROM line on."""
    parts = re.split(r"^(?=FROM )", (DOCKER / dockerfile).read_text(), flags=re.M)
    return {part.split()[3] if len(part.split()) > 3 and part.split()[2] == "AS" else f"#{i}": part
            for i, part in enumerate(parts) if part.startswith("FROM ")}


def arg_defaults(dockerfile: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", (DOCKER / dockerfile).read_text(), flags=re.M))


def app_env() -> dict[str, str]:
    return service_env("api")


WORKERS = ("worker", "worker-heavy")
POOL_KEYS = {"MASKFLOW_WORKER_MODELS", "MASKFLOW_MODEL_CONCURRENT_RUNS", "MASKFLOW_WORKER_SHARED_QUEUE"}  # a pool's own settings


def test_services_are_the_production_shape():
    assert set(SERVICES) == {"redis", "minio", "init", "api", "webhooks", *WORKERS}
    assert SERVICES["init"]["restart"] == "no"
    for name in WORKERS:
        env = SERVICES[name]["environment"]
        assert {k: v for k, v in env.items() if k not in POOL_KEYS} == SERVICES["api"]["environment"]
        assert "ports" not in SERVICES[name], "workers must scale: no fixed host port"
        assert SERVICES[name]["build"] == SERVICES["worker"]["build"]


def test_each_model_has_one_pool_as_maskflow_up_runs_them():
    pools = {name: load_config(env={k: v for k, v in service_env(name).items()
                                    if not v.startswith("${")}).worker.models for name in WORKERS}
    served = [model for models in pools.values() for model in models]
    assert sorted(served) == sorted(CATALOG), pools  # every model, each in one pool
    assert set(pools["worker-heavy"]) == set(StackConfig().heavy_models)


def test_only_the_light_pool_takes_the_shared_events_list():
    shared = {name: load_config(env={k: v for k, v in service_env(name).items()
                                     if not v.startswith("${")}).worker.shared_queue for name in WORKERS}
    assert shared == {"worker": True, "worker-heavy": False}


def test_app_environment_is_valid_config_matching_minio_and_redis():
    env = {k: v for k, v in app_env().items() if not str(v).startswith("${")}
    cfg = load_config(env=env)  # unknown or malformed MASKFLOW_* keys fail here
    minio_env = SERVICES["minio"]["environment"]
    assert cfg.minio.bucket == load_config(env={}).minio.bucket == "ai-segmentation"
    expected = notify_env(cfg, "/events")
    assert {k: v for k, v in minio_env.items() if k.startswith("MINIO_NOTIFY_")} == expected
    assert expected[f"MINIO_NOTIFY_REDIS_ADDRESS_{cfg.queue.target_id}"] == f"{cfg.redis.host}:{cfg.redis.port}"
    assert expected[f"MINIO_NOTIFY_REDIS_QUEUE_DIR_{cfg.queue.target_id}"] == "/events"
    assert f"MINIO_NOTIFY_REDIS_QUEUE_DIR_{cfg.queue.fast_target_id}" not in expected
    assert minio_env["MINIO_API_SYNC_EVENTS"] == "on"
    assert any(v.endswith(":/events") for v in SERVICES["minio"]["volumes"])
    assert cfg.minio.endpoint == "minio:9000"
    assert [with_defaults(p) for p in SERVICES["api"]["ports"]] == [f"127.0.0.1:{cfg.api.port}:{cfg.api.port}"]
    assert [with_defaults(p) for p in SERVICES["minio"]["ports"]] == ["127.0.0.1:9000:9000"]
    assert "ports" not in SERVICES["redis"], "Redis is reached only inside the compose network"
    assert [rule.arn for rule in load_rules(cfg)] == [redis_target_arn(cfg.queue.target_id),
                                                      redis_target_arn(cfg.queue.fast_target_id)]


def test_credentials_have_no_defaults():
    text = (REPO / "docker-compose.yml").read_text()
    assert "minioadmin" not in text
    for var in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        assert re.search(r"\$\{" + var + r":\?", text), f"{var} must be required from .env"


def test_redis_is_persistent_and_never_evicts():
    command = SERVICES["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_only_the_worker_image_carries_the_model_runtime():
    parts = re.split(r"^FROM ", (REPO / "infra/ops/docker/app.Dockerfile").read_text(), flags=re.M)
    app, worker = (next(s for s in parts if s.split()[2:3] == [name]) for name in ("app", "worker"))
    assert "pip install --no-cache-dir --no-deps /wheels/maskflow-*.whl\n" in app and "[worker]" not in app
    assert 'whl)[worker]"' in worker and "COPY models" in worker
    # Nor does any stage the app image is built on.
    named = stages("app.Dockerfile")
    parent = named["app"].split()[1]
    while parent in named:
        assert "worker" not in named[parent], parent
        parent = named[parent].split()[1]
    # Installed from the wheel only: no source folder for the working directory to shadow.
    assert not re.search(r"^COPY (api|functions|infra)\b", app + worker, flags=re.M)
    targets = {name: SERVICES[name]["build"]["target"] for name in ("api", "init", "worker", "worker-heavy")}
    assert targets == {"api": "app", "init": "app", "worker": "worker", "worker-heavy": "worker"}


def test_minio_image_builds_the_pinned_source():
    dockerfile = (REPO / "infra/ops/docker/minio.Dockerfile").read_text()
    assert f"MINIO_VERSION={MINIO.version}" in dockerfile
    assert f"MC_VERSION={MC.version}" in dockerfile
    # By default the binaries come from the stage that runs `go install`.
    source = arg_defaults("minio.Dockerfile")["MINIO_BINARIES"]
    assert "go install github.com/minio/minio@${MINIO_VERSION}" in stages("minio.Dockerfile")[source]
    assert "COPY --from=binaries /out/minio /out/mc " in dockerfile


def test_worker_image_carries_every_model_file():
    named = stages("app.Dockerfile")
    fetched = named[arg_defaults("app.Dockerfile")["MODELS"]]
    assert "install_model(" in fetched and "MASKFLOW_MODELS_CACHE_DIR=/models " in fetched
    worker = named["worker"]
    assert "COPY --from=models /models /opt/maskflow/models" in worker
    cache = re.search(r"^ENV (MASKFLOW_MODELS_CACHE_DIR)=(\S+)$", worker, flags=re.M)
    assert load_config(env={cache[1]: cache[2]}).models_cache == Path("/opt/maskflow/models")
    fetch = [entry.model_file for entry in CATALOG.values() if entry.fetch]
    in_git = [entry.model_file for entry in CATALOG.values() if not entry.fetch]
    assert fetch and all((REPO / "models" / f).is_file() for f in in_git)  # COPY models brings these


PUBLIC_BASES = {"PYTHON_IMAGE": "python:3.11-slim-bookworm", "DEBIAN_IMAGE": "debian:bookworm-slim",
                "GO_IMAGE": "golang:1.26-bookworm"}
DOCKERFILES = ("app.Dockerfile", "minio.Dockerfile", "redis.Dockerfile")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_images_build_from_public_bases_that_a_build_argument_replaces(dockerfile):
    defaults = arg_defaults(dockerfile)
    named = stages(dockerfile)
    for stage in named.values():
        base = stage.split()[1]
        if base in named:
            continue
        arg = re.fullmatch(r"\$\{(\w+)\}", base)
        assert arg, f"{dockerfile}: FROM {base} is not a build argument"
        default = defaults[arg[1]]
        assert default == PUBLIC_BASES.get(arg[1]) or default in named, f"{dockerfile}: {arg[1]}={default}"


def test_compose_passes_the_dockerfiles_own_defaults():
    cluster = yaml.safe_load((DOCKER / "cluster.compose.yml").read_text())["services"]
    services = {**SERVICES, **{f"cluster {name}": node for name, node in cluster.items()}}
    for name, service in services.items():
        build = service["build"]
        dockerfile = Path(build["dockerfile"]).name
        defaults = arg_defaults(dockerfile)
        from_args = set(re.findall(r"^FROM \$\{(\w+)\}", (DOCKER / dockerfile).read_text(), flags=re.M))
        args = {key: with_defaults(value) for key, value in build["args"].items()}
        assert set(args) == from_args, name  # every base is replaceable from .env
        assert args == {key: defaults[key] for key in args}, name


@pytest.mark.parametrize("dockerfile,stage", [("app.Dockerfile", "app"), ("app.Dockerfile", "worker"),
                                              ("minio.Dockerfile", None), ("redis.Dockerfile", None)])
def test_images_run_as_an_unprivileged_user(dockerfile, stage):
    named = stages(dockerfile)
    text = named[stage] if stage else list(named.values())[-1]
    users = re.findall(r"^USER (\S+)$", text, flags=re.M)
    assert users and users[-1] not in ("root", "0"), f"{dockerfile} {stage}: runs as root"
    assert not re.search(r"^(ENV|ARG) \w*(PASSWORD|SECRET|TOKEN|ACCESS_KEY)", text, flags=re.M)


def test_dockerignore_sends_only_what_the_images_use():
    lines = [line for line in (REPO / ".dockerignore").read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines[0] == "*", "an allow-list: everything else stays out of the build context"
    allowed = {line[1:] for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "api", "functions", "infra", "models",
                       "minio-notify.json", "requirements/app.lock", "requirements/worker.lock"}
    # and every file a Dockerfile copies from the context is in it
    copied = {src for dockerfile in DOCKER.glob("*.Dockerfile")
              for line in dockerfile.read_text().splitlines()
              if line.startswith("COPY ") and "--from=" not in line
              for src in line.split()[1:-1]}
    assert copied and copied <= allowed, copied - allowed


def test_notify_file_filters_input_created_events_only():
    doc = json.loads((REPO / "minio-notify.json").read_text())
    assert [rule["role"] for rule in doc["queue"]] == ["durable", "fast"]
    for rule, command in zip(doc["queue"], doc["operator_command"]):
        assert rule["prefix"] == "input/"
        assert rule["events"] == ["s3:ObjectCreated:*"]
        assert rule["arn"] in command and "--prefix input/" in command


@pytest.mark.parametrize("name", ["api", "worker", "worker-heavy", "webhooks", "init"])
def test_app_services_wait_for_bootstrap(name):
    if name == "init":
        assert SERVICES[name]["depends_on"]["minio"]["condition"] == "service_healthy"
    else:
        assert SERVICES[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"
        # Compose stops a service before what it depends on: workers settle their events first.
        assert SERVICES[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        if name != "webhooks":  # it reaches MinIO only to presign, which needs no connection
            assert SERVICES[name]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_api_may_open_enough_files_for_its_connection_limit():
    from maskflow.api.server import FDS_PER_CONNECTION, RESERVED_FDS
    env = {k: v for k, v in app_env().items() if not str(v).startswith("${")}
    need = load_config(env=env).api.connection_limit * FDS_PER_CONNECTION + RESERVED_FDS
    nofile = SERVICES["api"]["ulimits"]["nofile"]
    assert min(nofile["soft"], nofile["hard"]) >= need  # else the API refuses to start


CLUSTER = yaml.safe_load((REPO / "infra/ops/docker/cluster.compose.yml").read_text())["services"]


def test_cluster_override_is_four_erasure_coded_nodes_like_the_single_minio():
    assert set(CLUSTER) == {"minio", "minio2", "minio3", "minio4"}
    assert CLUSTER["minio"]["networks"]["default"]["aliases"] == ["minio1"]  # minio{1...4} resolves
    single = SERVICES["minio"]
    data, events = set(), set()
    for node in CLUSTER.values():
        # MinIO refuses to form a cluster unless every node's MINIO_* environment is the same
        assert node["environment"] == single["environment"]
        assert node["command"][:2] == ["server", "http://minio{1...4}:9000/data"]
        assert node["build"] == single["build"] and node["healthcheck"] == single["healthcheck"]
        volumes = dict(reversed(v.split(":")) for v in node["volumes"])
        data.add(volumes["/data"])
        events.add(volumes["/events"])  # the durable target's queue_dir, one per node
        assert "ports" not in node  # node 1 keeps docker-compose.yml's port
    assert len(data) == len(events) == 4


# -- least privilege (infra/ops/roles.py) -------------------------------------------------------
@pytest.mark.parametrize("service", ["api", "worker", "webhooks"])
def test_the_api_and_workers_get_only_their_own_credentials(service):
    cfg = load_config(env=service_env(service))
    assert cfg.minio.access_key == roles.minio_user(service) and cfg.redis.username == service
    credentials = roles.Credentials(Path(SECRETS) / "secrets")
    assert cfg.minio.secret_key == credentials.minio_secret(service)
    assert cfg.redis.password == credentials.redis_password(service)
    text = yaml.safe_dump(SERVICES[service])
    assert "MINIO_ROOT" not in text and "admin-" not in text
    assert all(f"/secrets/{service}/" in str(f) for f in mounted(service).values())
    assert cfg.api_tokens if service == "api" else not cfg.api_tokens  # the worker holds no token
    # only the dispatcher signs webhooks
    assert cfg.webhook.secret == (credentials.secret("webhooks", "webhook-secret") if service == "webhooks" else "")


def test_only_minio_and_the_bootstrap_hold_the_root_user():
    holders = {name for name, svc in SERVICES.items() if "MINIO_ROOT" in json.dumps(svc.get("environment", {}))}
    assert holders == {"minio", "init"}
    init = SERVICES["init"]
    assert init["command"][-2:] == ["--credentials", "/run/secrets/users"]
    users = read_users(Path(mounted("init")["/run/secrets/users/api/minio-secret-key"]).parents[1])
    assert {role: key for role, (key, _) in users.items()} == {r: roles.minio_user(r) for r in roles.MINIO_ROLES}
    env = {k: v for k, v in service_env("init").items() if not v.startswith("${")}
    assert load_config(env=env).redis.username == "admin"


def test_redis_and_minio_get_their_logins_from_files():
    command = SERVICES["redis"]["command"]
    acl = mounted("redis")[command[command.index("--aclfile") + 1]]
    cfg = load_config(env=app_env())
    credentials = roles.Credentials(Path(SECRETS) / "secrets")
    assert acl.read_text() == roles.acl_file(cfg, {r: credentials.redis_password(r) for r in roles.REDIS_ROLES})
    assert not any(credentials.redis_password(r) in acl.read_text() for r in roles.REDIS_ROLES)  # hashes only
    notify = mounted("minio")[SERVICES["minio"]["environment"]["MINIO_CONFIG_ENV_FILE"]].read_text()
    for target in (cfg.queue.target_id, cfg.queue.fast_target_id):
        assert f"MINIO_NOTIFY_REDIS_USER_{target}=minio\n" in notify
        assert f"MINIO_NOTIFY_REDIS_PASSWORD_{target}={credentials.redis_password('minio')}\n" in notify
    assert "PASSWORD" not in json.dumps(SERVICES["minio"]["environment"]).replace("MINIO_ROOT_PASSWORD", "")
    assert "NOAUTH" in SERVICES["redis"]["healthcheck"]["test"][-1]  # healthy without a credential
