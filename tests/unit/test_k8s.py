"""infra/ops/k8s, offline: rendered by the pinned kustomize, validated by the pinned kubeconform against
the schemas vendored in infra/ops/k8s/schemas/, and checked against the config the way
test_compose.py checks docker-compose.yml.

kustomize and kubeconform are built by infra/ops/install.py (once; cached in ~/.cache/maskflow/bin).
A tool that cannot be built is an error of these tests, never a skip.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import falcon.testing
import pytest
import redis
import yaml

from conftest import REPO
from maskflow.api.app import build_deps, create_app
from maskflow.infra.ops import install, roles
from maskflow.infra.ops.bootstrap import load_rules, notify_env, redis_target_arn
from maskflow.infra.ops.processes import free_port, wait_until
from maskflow.infra.domain.catalog import names
from maskflow.infra.stores.keys import model_queue_key
from maskflow.infra.stores.workers import WorkerRegistry
from maskflow.infra.wiring.config import ENV_PREFIX, env_for, load_config, replace

K8S = REPO / "infra" / "ops" / "k8s"
SCHEMAS = K8S / "schemas"
TARGETS = {"base": K8S / "base", "small": K8S / "overlays" / "small"}
KINDS = {"ConfigMap", "Service", "Deployment", "Job", "ScaledObject"}
# Config keys that are credentials: only ever from a Secret.
SECRET_ENV = {"MASKFLOW_MINIO_ACCESS_KEY", "MASKFLOW_MINIO_SECRET_KEY", "MASKFLOW_API_TOKEN",
              "MASKFLOW_API_TOKENS", "MASKFLOW_REDIS_USERNAME", "MASKFLOW_REDIS_PASSWORD",
              "MASKFLOW_WEBHOOK_SECRET"}
# The Secret of each workload: one per role (infra/ops/roles.py), created by the operator.
ROLE_SECRETS = {"maskflow-api": "maskflow-api", "maskflow-worker": "maskflow-worker",
                "maskflow-worker-heavy": "maskflow-worker", "maskflow-webhooks": "maskflow-webhooks",
                "maskflow-bootstrap": "maskflow-bootstrap"}
PROBE_PASSWORDS = {"admin": "probe-admin-password", "worker": "probe-worker-password"}


def _schema_pins():
    spec = importlib.util.spec_from_file_location("make_schemas", SCHEMAS / "make_schemas.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PINS = _schema_pins()


@pytest.fixture(scope="module")
def kustomize() -> Path:
    return install.go_install(install.KUSTOMIZE)


@pytest.fixture(scope="module")
def kubeconform() -> Path:
    return install.go_install(install.KUBECONFORM)


def render(kustomize: Path, target: Path) -> str:
    proc = subprocess.run([str(kustomize), "build", str(target)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def rendered(kustomize) -> dict[str, list[dict]]:
    return {name: list(yaml.safe_load_all(render(kustomize, path))) for name, path in TARGETS.items()}


def validate(kubeconform: Path, docs: list[dict], tmp_path: Path) -> tuple[int, dict]:
    """kubeconform, strict, schemas from the vendored folders only; missing schemas are errors."""
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    proc = subprocess.run(
        [str(kubeconform), "-strict", "-summary", "-verbose", "-output", "json",
         "-kubernetes-version", PINS.KUBERNETES,
         "-schema-location",
         str(SCHEMAS / "{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}"
                       "/{{ .ResourceKind }}{{ .KindSuffix }}.json"),
         "-schema-location", str(SCHEMAS / "keda" / "{{ .ResourceKind }}{{ .KindSuffix }}.json"),
         str(manifest)],
        capture_output=True, text=True)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def one(docs: list[dict], kind: str, name: str) -> dict:
    """The one resource of `kind` named `name`, or `name` plus kustomize's 10-character hash."""
    found = [d for d in docs if d["kind"] == kind
             and re.fullmatch(re.escape(name) + r"(-[a-z0-9]{10})?", d["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def container(docs: list[dict], kind: str, name: str) -> dict:
    containers = one(docs, kind, name)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def environment(docs: list[dict], c: dict) -> dict[str, str]:
    """A container's MASKFLOW_* environment, credentials as placeholders (checked elsewhere)."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in c.get("env", []):
        if var["name"].startswith(ENV_PREFIX):
            env[var["name"]] = var.get("value", "from-a-secret")
    return env


def workloads(docs: list[dict]) -> list[tuple[str, dict]]:
    return [(d["metadata"]["name"], c) for d in docs if d["kind"] in ("Deployment", "Job")
            for c in d["spec"]["template"]["spec"]["containers"]]


# -- schemas --------------------------------------------------------------------------------
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_manifests_validate_strictly_against_the_vendored_schemas(target, rendered, kubeconform, tmp_path):
    docs = rendered[target]
    code, report = validate(kubeconform, docs, tmp_path)
    statuses = {(r["kind"], r["name"]): r["status"] for r in report["resources"]}
    assert code == 0, report
    assert set(statuses.values()) == {"statusValid"}, statuses
    assert report["summary"]["skipped"] == 0 and len(statuses) == len(docs) == 10
    assert {kind for kind, _ in statuses} == KINDS


def test_validation_fails_on_a_wrong_field_a_wrong_type_or_an_unknown_kind(rendered, kubeconform, tmp_path):
    docs = copy.deepcopy(rendered["small"])
    one(docs, "Deployment", "maskflow-worker")["spec"]["template"]["spec"]["terminationGracePeriod"] = 120
    one(docs, "ScaledObject", "maskflow-worker")["spec"]["triggers"][0]["metadata"]["listLength"] = 20
    docs.append({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "x"},
                 "spec": {"maxUnavailable": 1}})
    code, report = validate(kubeconform, docs, tmp_path)
    bad = {r["kind"]: r for r in report["resources"] if r["status"] != "statusValid"}
    assert code != 0
    assert set(bad) == {"Deployment", "ScaledObject", "PodDisruptionBudget"}
    assert "terminationGracePeriod" in bad["Deployment"]["msg"]
    assert "listLength" in bad["ScaledObject"]["msg"]
    assert bad["PodDisruptionBudget"]["status"] == "statusError"  # no schema is an error, not a skip


def test_schemas_are_the_pinned_ones():
    folders = sorted(p.name for p in SCHEMAS.iterdir() if p.is_dir())
    assert folders == ["keda", f"v{PINS.KUBERNETES}-standalone-strict"]
    names = {p.name for p in (SCHEMAS / folders[1]).glob("*.json")}
    assert names == {PINS.file_name(kind, api) for kind, api in PINS.KINDS}
    keda = json.loads((SCHEMAS / "keda" / "scaledobject-keda-v1alpha1.json").read_text())
    assert PINS.KEDA in keda["$comment"]
    for name in names:
        schema = json.loads((SCHEMAS / folders[1] / name).read_text())
        assert f"kubernetes-validate {PINS.KUBERNETES_VALIDATE}" in schema["$comment"]
        # standalone: kubeconform must never need the network to resolve a reference
        assert not re.search(r'"\$ref": "(?!#)', json.dumps(schema)), name


# -- agreement with the config --------------------------------------------------------------
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_environment_is_valid_config(target, rendered):
    docs = rendered[target]
    names = set(env_for(load_config(env={})))
    for workload, c in workloads(docs):
        env = environment(docs, c)
        assert set(env) <= names, f"{workload}: not config keys: {set(env) - names}"
        cfg = load_config(env=env)  # malformed values fail here
        assert cfg.api.host == "0.0.0.0", "the API must listen beyond the pod's loopback"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_scaling_follows_the_configured_events_list(target, rendered):
    docs = rendered[target]
    worker = container(docs, "Deployment", "maskflow-worker")
    env = environment(docs, worker)
    cfg = load_config(env=env)
    scaled = one(docs, "ScaledObject", "maskflow-worker")["spec"]
    assert scaled["scaleTargetRef"]["name"] == one(docs, "Deployment", "maskflow-worker")["metadata"]["name"]
    assert "replicas" not in one(docs, "Deployment", "maskflow-worker")["spec"], "KEDA owns the count"
    assert scaled["minReplicaCount"] == 0 and scaled["maxReplicaCount"] >= 1
    assert scaled["cooldownPeriod"] > 0
    [trigger] = scaled["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "redis"
    # the list MinIO writes to, as the workers are configured and as the config's default
    assert meta["listName"] == cfg.queue.events_key == load_config(env={}).queue.events_key
    assert int(meta["listLength"]) > 0
    # KEDA reads the Redis address from the worker container's own environment
    names = env_for(load_config(env={}))
    assert meta["hostFromEnv"] in names and meta["portFromEnv"] in names
    assert env[meta["hostFromEnv"]] == cfg.redis.host
    assert int(env[meta["portFromEnv"]]) == cfg.redis.port
    # ... and logs in as the worker's Redis user (its Secret's), which may LLEN the list
    assert (meta["usernameFromEnv"], meta["passwordFromEnv"]) == ("MASKFLOW_REDIS_USERNAME", "MASKFLOW_REDIS_PASSWORD")
    assert int(meta["databaseIndex"]) == cfg.redis.db


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_each_pool_scales_on_its_own_models_lists(target, rendered):
    docs = rendered[target]
    pools = {name: load_config(env=environment(docs, c)) for name, c in workloads(docs)
             if name.startswith("maskflow-worker")}
    assert set(pools) == {"maskflow-worker", "maskflow-worker-heavy"}
    light, heavy = pools["maskflow-worker"].worker.models, pools["maskflow-worker-heavy"].worker.models
    assert set(light) | set(heavy) == set(names()) and not set(light) & set(heavy), "each model in one pool"
    scaled = one(docs, "ScaledObject", "maskflow-worker-heavy")["spec"]
    assert scaled["scaleTargetRef"]["name"] == "maskflow-worker-heavy" and scaled["minReplicaCount"] == 0
    cfg = pools["maskflow-worker-heavy"]
    assert sorted(t["metadata"]["listName"] for t in scaled["triggers"]) == sorted(
        model_queue_key(cfg.queue.events_key, model) for model in heavy)
    assert cfg.model.concurrent_runs == cfg.worker.concurrency >= 2, "one process, a run per core"
    assert pools["maskflow-worker"].worker.shared_queue and not cfg.worker.shared_queue, \
        "only the light pool takes the shared events list"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_bucket_targets_and_ports_agree_with_the_config(target, rendered):
    docs = rendered[target]
    defaults = load_config(env={})
    api = container(docs, "Deployment", "maskflow-api")
    cfg = load_config(env=environment(docs, api))
    assert cfg.minio.bucket == defaults.minio.bucket == "ai-segmentation"
    assert (cfg.queue.target_id, cfg.queue.fast_target_id) == \
           (defaults.queue.target_id, defaults.queue.fast_target_id)
    assert [rule.arn for rule in load_rules(cfg, REPO / "minio-notify.json")] == \
           [redis_target_arn(cfg.queue.target_id), redis_target_arn(cfg.queue.fast_target_id)]
    [port] = api["ports"]
    assert port["containerPort"] == cfg.api.port == defaults.api.port
    service = one(docs, "Service", "maskflow-api")["spec"]
    [sport] = service["ports"]
    assert sport["targetPort"] == port["name"] and sport["port"] == cfg.api.port
    assert service["selector"].items() <= \
        one(docs, "Deployment", "maskflow-api")["spec"]["template"]["metadata"]["labels"].items()
    # every workload sees the same config (only the API needs its token and the dispatcher its
    # HMAC key; a pool has its models and the lists it takes)
    configs = [replace(load_config(env=environment(docs, c)), api={"token": "", "tokens": ()},
                       worker={"models": (), "shared_queue": True}, webhook={"secret": ""},
                       model={"concurrent_runs": 1}) for _, c in workloads(docs)]
    assert all(other == configs[0] for other in configs)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_credentials_only_from_secrets(target, rendered):
    docs = rendered[target]
    assert "Secret" not in {d["kind"] for d in docs}
    for workload, c in workloads(docs):
        for var in c.get("env", []):
            if var["name"] in SECRET_ENV:
                assert set(var) == {"name", "valueFrom"} and "secretKeyRef" in var["valueFrom"], workload
        for source in c.get("envFrom", []):
            data = one(docs, "ConfigMap", source["configMapRef"]["name"])["data"]
            assert not set(data) & SECRET_ENV
    text = "\n".join(p.read_text() for p in K8S.rglob("*") if p.suffix in (".yaml", ".md", ".py"))
    assert "minioadmin" not in text
    for name in ("api", "worker", "webhooks", "bootstrap"):
        env = {v["name"] for v in container(docs, "Deployment" if name != "bootstrap" else "Job",
                                            f"maskflow-{name}").get("env", [])}
        assert {"MASKFLOW_MINIO_ACCESS_KEY", "MASKFLOW_MINIO_SECRET_KEY"} <= env


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_each_workload_reads_only_its_own_roles_secret(target, rendered):
    docs = rendered[target]
    for workload, c in workloads(docs):
        refs = {var["valueFrom"]["secretKeyRef"]["name"] for var in c.get("env", [])
                if "secretKeyRef" in var.get("valueFrom", {})}
        assert refs == {ROLE_SECRETS[workload]}, workload
        names = {var["name"] for var in c["env"]}
        assert {"MASKFLOW_REDIS_USERNAME", "MASKFLOW_REDIS_PASSWORD"} <= names, workload
        assert ("MASKFLOW_API_TOKENS" in names) == (workload == "maskflow-api"), workload
        assert ("MASKFLOW_WEBHOOK_SECRET" in names) == (workload == "maskflow-webhooks"), workload
    # the dispatcher mounts no Secret but its own, in env or in a volume
    hooks = one(docs, "Deployment", "maskflow-webhooks")["spec"]["template"]["spec"]
    [hook] = hooks["containers"]
    mounted = {v["secret"]["secretName"] for v in hooks.get("volumes", []) if "secret" in v}
    mounted |= {s["secret"]["name"] for v in hooks.get("volumes", []) if "projected" in v
                for s in v["projected"]["sources"] if "secret" in s}
    mounted |= {var["valueFrom"]["secretKeyRef"]["name"] for var in hook.get("env", [])
                if "secretKeyRef" in var.get("valueFrom", {})}
    mounted |= {s["secretRef"]["name"] for s in hook.get("envFrom", []) if "secretRef" in s}
    assert mounted == {"maskflow-webhooks"}
    job = one(docs, "Job", "maskflow-bootstrap")["spec"]["template"]["spec"]
    [boot] = job["containers"]
    assert boot["args"] == ["--credentials", "/credentials"]
    mounts = {m["name"]: m["mountPath"] for m in boot["volumeMounts"]}
    for volume in job["volumes"]:  # the services' MinIO keys only: no Redis password, no token
        role = volume["secret"]["secretName"].removeprefix("maskflow-")
        assert mounts[volume["name"]] == f"/credentials/{role}"
        assert [i["key"] for i in volume["secret"]["items"]] == ["minio-access-key", "minio-secret-key"]
    # every role the bootstrap makes a MinIO user for (bootstrap.read_users reads them all)
    assert sorted(v["secret"]["secretName"] for v in job["volumes"]) == \
        sorted(f"maskflow-{role}" for role in roles.MINIO_ROLES)
    for scaled in (d for d in docs if d["kind"] == "ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["metadata"]["passwordFromEnv"] == "MASKFLOW_REDIS_PASSWORD"


# -- commands and probes are real -----------------------------------------------------------
def test_commands_are_the_packages_modules_in_the_right_images(rendered):
    docs = rendered["small"]
    dockerfile = (REPO / "infra/ops/docker/app.Dockerfile").read_text()
    assert re.search(r"^FROM .* AS app\nWORKDIR /app$", dockerfile, flags=re.M)
    assert re.search(r"^FROM app AS worker$", dockerfile, flags=re.M)
    expected = {"maskflow-api": (["python", "-m", "maskflow.api"], "maskflow-app"),
                "maskflow-bootstrap": (["python", "-m", "maskflow.infra.ops.bootstrap"], "maskflow-app"),
                "maskflow-worker": (["python", "-m", "maskflow.functions", "--id", "$(WORKER_ID)"],
                                    "maskflow-worker"),
                "maskflow-worker-heavy": (["python", "-m", "maskflow.functions", "--id", "$(WORKER_ID)"],
                                          "maskflow-worker"),
                "maskflow-webhooks": (["python", "-m", "maskflow.functions.webhooks", "--id", "$(POD_NAME)"],
                                      "maskflow-app")}
    assert {workload for workload, _ in workloads(docs)} == set(expected)
    for workload, c in workloads(docs):
        command, image = expected[workload]
        assert c["command"] == command and c["image"].split(":")[0] == image
        assert c["workingDir"] == "/app"
        module = command[2]
        plain = ("maskflow.infra.ops.bootstrap", "maskflow.functions.webhooks")  # modules, not packages
        assert importlib.util.find_spec(f"{module}.__main__" if module not in plain else module)
    # $(WORKER_ID) and $(POD_NAME) are expanded by the kubelet from the pod's name: unique per pod
    for workload, name in (("maskflow-worker", "WORKER_ID"), ("maskflow-webhooks", "POD_NAME")):
        [var] = [v for v in container(docs, "Deployment", workload)["env"] if v["name"] == name]
        assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    for module in ("maskflow.functions", "maskflow.functions.webhooks"):
        helped = subprocess.run([sys.executable, "-m", module, "--help"],
                                capture_output=True, text=True, cwd=REPO)
        assert helped.returncode == 0 and "--id" in helped.stdout, module


def test_api_probes_are_real_routes(rendered):
    api = container(rendered["small"], "Deployment", "maskflow-api")
    assert api["livenessProbe"]["httpGet"]["port"] == api["readinessProbe"]["httpGet"]["port"] == "http"
    cfg = replace(load_config(env={}), redis={"port": free_port()},
                  minio={"endpoint": f"127.0.0.1:{free_port()}"})
    client = falcon.testing.TestClient(create_app(build_deps(cfg)))
    assert client.simulate_get(api["livenessProbe"]["httpGet"]["path"]).status_code == 200
    # Redis and MinIO are closed ports here: the readiness route exists and says not ready
    ready = client.simulate_get(api["readinessProbe"]["httpGet"]["path"])
    assert ready.status_code == 503 and ready.json["status"] == "not_ready"


def test_grace_period_covers_the_retry_budget(rendered):
    """Handler and settle each retry for the whole transient-fault budget (functions/steps.py)."""
    worker = one(rendered["small"], "Deployment", "maskflow-worker")["spec"]["template"]["spec"]
    cfg = load_config(env=environment(rendered["small"], worker["containers"][0]))
    w = cfg.worker
    waits = sum(min(0.5 * 2 ** i, w.retry_max_wait) + 0.5 for i in range(w.retry_attempts - 1))
    assert 2 * waits + 10 <= worker["terminationGracePeriodSeconds"] <= cfg.task.timeout


# -- the worker probe, run on a real Redis and a real worker ---------------------------------
@pytest.fixture(scope="module")
def private_redis(tmp_path_factory):
    """A Redis with the roles' users, the default user off: the probe runs as the worker."""
    port, folder = free_port(), tmp_path_factory.mktemp("redis")
    (folder / "users.acl").write_text(roles.acl_file(load_config(env={}), PROBE_PASSWORDS))
    proc = subprocess.Popen([str(install.redis_server()), "--bind", "127.0.0.1", "--port", str(port),
                             "--save", "", "--appendonly", "no", "--aclfile", str(folder / "users.acl"),
                             "--dir", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = redis.Redis(port=port, username="admin", password=PROBE_PASSWORDS["admin"])
    try:
        wait_until(r.ping, "redis-server", timeout=20, proc=proc)
        yield port, r
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def worker_login() -> dict[str, str]:
    """What the worker's Secret gives its container, on the private Redis."""
    return {"MASKFLOW_REDIS_USERNAME": "worker", "MASKFLOW_REDIS_PASSWORD": PROBE_PASSWORDS["worker"]}


@pytest.fixture
def probe(rendered, tmp_path, private_redis):
    """probe(mode, worker_id, port=...) -> exit code of the worker probe as deployed."""
    docs = rendered["small"]
    worker = container(docs, "Deployment", "maskflow-worker")
    [mount] = worker["volumeMounts"]
    [volume] = one(docs, "Deployment", "maskflow-worker")["spec"]["template"]["spec"]["volumes"]
    assert volume["name"] == mount["name"]
    files = one(docs, "ConfigMap", volume["configMap"]["name"])["data"]
    script = tmp_path / "worker_probe.py"
    script.write_text(files[script.name])
    commands = {worker[kind]["exec"]["command"][-1]: worker[kind]["exec"]["command"]
                for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert set(commands) == {"live", "ready"}
    assert all(cmd[:2] == ["python", f"{mount['mountPath']}/{script.name}"] for cmd in commands.values())

    def run(mode: str, worker_id: str, port: int = private_redis[0]) -> int:
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        env.update(environment(docs, worker), MASKFLOW_REDIS_HOST="127.0.0.1",
                   MASKFLOW_REDIS_PORT=str(port), WORKER_ID=worker_id, **worker_login())
        return subprocess.run([sys.executable, str(script), *commands[mode][2:]], env=env,
                              capture_output=True, timeout=30).returncode
    return run


def test_worker_probe_reads_the_heartbeat(probe, private_redis):
    port, r = private_redis
    cfg = replace(load_config(env={}), redis={"port": port})
    queue = WorkerRegistry(r, "maskflow-worker-abc", "run", cfg.worker.lease)
    assert (probe("live", queue.worker_id), probe("ready", queue.worker_id)) == (1, 1)
    queue.beat(ready="0")  # models not loaded (yet, or never)
    assert (probe("live", queue.worker_id), probe("ready", queue.worker_id)) == (0, 1)
    queue.beat(ready="1")
    assert (probe("live", queue.worker_id), probe("ready", queue.worker_id)) == (0, 0)
    assert probe("live", "another-pod") == 1
    queue.retire()
    assert probe("live", queue.worker_id) == 1
    # Redis away: not the worker's fault, so alive, but not ready
    closed = free_port()
    assert (probe("live", "x", port=closed), probe("ready", "x", port=closed)) == (0, 1)


def test_worker_probe_follows_a_real_worker(rendered, probe, private_redis, tmp_path):
    """The deployed command, with $(WORKER_ID) as the kubelet expands it; only Redis is needed."""
    port, _ = private_redis
    docs = rendered["small"]
    worker = container(docs, "Deployment", "maskflow-worker")
    pod = "maskflow-worker-7d9f-x2k4q"
    argv = [sys.executable if a == "python" else a.replace("$(WORKER_ID)", pod) for a in worker["command"]]
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(environment(docs, worker), MASKFLOW_REDIS_HOST="127.0.0.1", MASKFLOW_REDIS_PORT=str(port),
               MASKFLOW_WORKER_HEARTBEAT="1", MASKFLOW_WORKER_LEASE="3", **worker_login())
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: probe("ready", pod) == 0, "worker readiness", timeout=60, proc=proc, log=log)
        assert probe("live", pod) == 0
        proc.send_signal(signal.SIGTERM)  # finishes (nothing in flight) and deregisters
        assert proc.wait(timeout=30) == 0
        assert probe("live", pod) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_readme_tenant_env_is_what_minio_needs(rendered):
    """Every MinIO node: both Redis targets, the durable one with a queue_dir on its own volume."""
    text = (K8S / "README.md").read_text()
    block = re.search(r"<!-- tenant-env:[^>]*-->\n```yaml\n(.*?)```", text, flags=re.S)
    assert block, "the Tenant block is gone from infra/ops/k8s/README.md"
    tenant = yaml.safe_load(block.group(1))["spec"]
    env = {var["name"]: var["value"] for var in tenant["env"]}
    docs = rendered["small"]
    cfg = load_config(env=environment(docs, container(docs, "Deployment", "maskflow-worker")))
    queue_dir = env[f"MINIO_NOTIFY_REDIS_QUEUE_DIR_{cfg.queue.target_id}"]
    assert {k: v for k, v in env.items() if k.startswith("MINIO_NOTIFY_")} == notify_env(cfg, queue_dir)
    assert env["MINIO_API_SYNC_EVENTS"] == "on"
    # on the pod's first volume, beside (not inside) MinIO's drive
    volume = f"{tenant['mountPath']}0"
    assert queue_dir.startswith(volume + "/")
    assert not queue_dir.startswith(f"{volume}/{tenant['subPath'].strip('/')}")
    assert tenant["pools"][0]["servers"] >= 4
