"""maskflow on nine hosts: network namespaces on a private bridge, each process bound to its host.

    m1 .. m4     MinIO, distributed: one drive each, erasure-coded (EC:2), every node with the
                 same Redis notification targets and a queue_dir of its own
    redis-a      Redis master (+ Sentinel), and the floating address MinIO's targets use
    redis-b      Redis replica (+ Sentinel)
    api          the API (+ Sentinel)
    worker-a/-b  one worker process each (2 consumers)
    (root)       this test: mc mirror, checks; it reaches the bridge through its .254 address

Auth is on everywhere, as `maskflow up` has it: every Redis node loads the same aclfile (the
default user off, a user per role, and the users Sentinel and the replicas log in as), the
Sentinels require a password of their own, and every process runs with its role's credentials
(infra/ops/roles.py), none of them in a command line.

Every service finds the Redis master through the three Sentinels (`redis.sentinels`).  MinIO
cannot: its Redis target takes one address.  It gets a floating address on an interface that
Sentinel's client-reconfig-script moves into the new master's host on failover (see
`VIP_SCRIPT`), and its durable target (queue_dir) keeps every event on the node's disk until a
Redis at that address accepts it: while the address refuses connections or answers READONLY,
MinIO retries every 3 s.

Each test pushes a batch of 200 photos through `mc mirror` to m1 and checks that every photo
is completed exactly once: each task completed, the counters moved by 200, 200 cut-outs and
200 masks, no dead letter, nothing left queued, in flight or in any node's queue_dir, and (with
no worker killed) the workers' heartbeat counters say 200 completions between them.  The
faults: a MinIO host, a worker host, and the Redis master's host killed mid-batch.
Timings go to tests/artifacts/multihost/results.json, beside every process' log.
"""
from __future__ import annotations

import collections
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import requests

from checks import make_photos
from conftest import REPO
from maskflow.functions.events import PoisonEvent, parse_message
from maskflow.infra.ops import install, roles
from maskflow.infra.ops.bootstrap import notify_env
from maskflow.infra.ops.processes import wait_until
from maskflow.infra.ops.stack import Stack
from maskflow.infra.stores.keys import WORKERS_KEY, Heartbeat, inflight_key
from maskflow.infra.stores.queue import dead_letter_count, unwrap
from maskflow.infra.stores.tasks import TaskStore
from maskflow.infra.stores.workers import worker_status
from maskflow.infra.wiring.config import Config, load_config, replace
from maskflow.infra.wiring.connections import minio_client, redis_client
from multihost_lab import Host, Lab, LabError, Proc, netns_unavailable, sh, sweep_leftovers

pytestmark = pytest.mark.multihost

PHOTOS = 200
HOSTS = {"m1": 1, "m2": 2, "m3": 3, "m4": 4, "redis-a": 5, "redis-b": 6, "api": 7,
         "worker-a": 8, "worker-b": 9}
VIP_INDEX = 100
MASTER_NAME = "maskflow"
SENTINEL_PORT = 26379
BATCH_TIMEOUT = 240.0
ARTIFACTS = REPO / "tests" / "artifacts" / "multihost"  # numbers and every process' log

# Sentinel's client-reconfig-script, run by each Sentinel after a failover with
# <master-name> <role> <state> <from-ip> <from-port> <to-ip> <to-port>: the leader moves the
# floating address's interface into the new master's namespace.  The interface keeps its MAC
# and its bridge port, so no host's ARP cache goes stale.  Exit 1 makes Sentinel retry.
VIP_SCRIPT = """#!/bin/sh
[ "$2" = leader ] || exit 0
case "$6" in
{cases}
  *) exit 0 ;;
esac
from=""
for ns in {namespaces}; do
  if ip -n "$ns" link show vip0 >/dev/null 2>&1; then from=$ns; fi
done
[ -n "$from" ] || exit 1
if [ "$from" != "$to" ]; then ip -n "$from" link set vip0 netns "$to" || exit 1; fi
ip -n "$to" addr replace {vip}/32 dev vip0 && ip -n "$to" link set vip0 up || exit 1
echo "$(date +%s.%N) moved {vip} from $from to $to" >> {log}
"""


@dataclass
class Cluster:
    lab: Lab
    cfg: Config                      # the test's own view: MinIO m1, Redis through the Sentinels
    vip: str
    mc: Path
    mc_config: Path
    minio_argv: list[str]
    minio_env: dict[str, str]
    photos: Path
    keys: list[str]
    procs: dict[str, Proc] = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    batch_started: float = 0.0
    _redis: redis.Redis | None = None

    def host(self, name: str) -> Host:
        return self.lab.hosts[name]

    def redis(self) -> redis.Redis:
        """The test's client: through the Sentinels, like the services', so it follows failovers."""
        if self._redis is None:
            self._redis = redis_client(self.cfg, timeout=2, connect_timeout=2)
        return self._redis

    def since_start(self) -> float:
        return round(time.monotonic() - self.batch_started, 1)

    def queue_dirs(self) -> list[Path]:
        return [self.lab.workdir / "events" / name for name in ("m1", "m2", "m3", "m4")]

    def service_cfg(self, minio_node: str, **sections) -> Config:
        endpoint = f"{self.host(minio_node).ip}:9000"
        return replace(self.cfg, minio={"endpoint": endpoint}, **sections)

    # -- processes -------------------------------------------------------------------------
    def start_minio(self, name: str) -> None:
        """MinIO on host `name`, with the host's own drive and queue_dir at the shared paths.

        Every node must have the same MINIO_* environment (MinIO refuses to form the cluster
        otherwise), so the same queue_dir path; and the drives follow {1...4} with one path.
        On real hosts each path is that host's own disk; here each MinIO gets a mount
        namespace of its own (`ip netns exec` makes one) with its host's directories bound
        onto those paths.
        """
        host, work = self.host(name), self.lab.workdir
        drive, events = work / "drives" / name, work / "events" / name
        drive.mkdir(parents=True, exist_ok=True)
        events.mkdir(parents=True, exist_ok=True)
        mounts = 'mount --bind "$1" "$3" && mount --bind "$2" "$4" && shift 4 && exec "$@"'
        self.procs[name] = self.lab.spawn(host, "minio", [
            "sh", "-c", mounts, "sh", str(drive), str(events), str(work / "drive"), str(work / "queue"),
            *self.minio_argv, "--address", f"{host.ip}:9000", "--console-address", f"{host.ip}:9001"],
            env=self.minio_env)

    def service_env(self, minio_node: str, role: str) -> dict[str, str]:
        """A service's environment: its own users and their secrets as files (roles.py)."""
        return roles.service_env(self.service_cfg(minio_node), role, roles.Credentials(self.cfg.secrets_dir))

    def start_worker(self, name: str, minio_node: str) -> None:
        self.procs[name] = self.lab.spawn(self.host(name), "worker",
                                          [sys.executable, "-m", "maskflow.functions", "--id", name],
                                          env=self.service_env(minio_node, "worker"), cwd=REPO)
        proc = self.procs[name]
        wait_until(lambda: _alive(proc) and worker_status(self.redis(), name).get(Heartbeat.READY) == "1",
             f"worker {name} ready", 60, every=0.2)

    def minio_ready(self, name: str) -> bool:
        url = f"http://{self.host(name).ip}:9000/minio/health/ready"
        return requests.get(url, timeout=2).status_code == 200


def _alive(proc: Proc) -> bool:
    if proc.popen.poll() is not None:
        raise LabError(f"{proc.host.name}/{proc.name} exited with {proc.popen.returncode}: "
                       + proc.log.read_text(errors="replace")[-2000:])
    return True


def _redis_at(host: Host, cfg: Config, port: int = 6379) -> redis.Redis:
    """One Redis node as the admin user, or one Sentinel with the Sentinels' password."""
    auth = ({"password": cfg.redis.sentinel_password} if port == SENTINEL_PORT
            else {"username": cfg.redis.username, "password": cfg.redis.password})
    return redis.Redis(host.ip, port, socket_timeout=2, socket_connect_timeout=2, retry=None, **auth)


# -- the cluster -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    sweep_leftovers()
    minio = install.resolve_binary(install.MINIO, os.environ.get("MASKFLOW_STACK_MINIO_BIN", ""))
    mc = install.resolve_binary(install.MC, os.environ.get("MASKFLOW_STACK_MC_BIN", ""))
    redis_server = install.redis_server()
    workdir = tmp_path_factory.mktemp("multihost")
    lab = Lab(workdir)
    c: Cluster | None = None
    started = time.monotonic()
    try:
        lab.open()
        hosts = {name: lab.add_host(name, index) for name, index in HOSTS.items()}
        vip = f"{lab.subnet}.{VIP_INDEX}"
        redis_hosts = [hosts["redis-a"], hosts["redis-b"]]
        for host in redis_hosts:
            # Redis binds the floating address before it is here (nonlocal bind); only the
            # interface that holds an address answers ARP for it; no reverse-path filter (the
            # floating address comes in on vip0, replies leave by eth0).
            lab.sysctl(host, "net.ipv4.ip_nonlocal_bind=1", "net.ipv4.conf.all.arp_ignore=1",
                       "net.ipv4.conf.all.arp_announce=2", "net.ipv4.conf.all.rp_filter=0",
                       "net.ipv4.conf.default.rp_filter=0")
        lab.add_floating_address(hosts["redis-a"], vip)

        secret = secrets.token_hex(12)
        base = load_config(env={})
        sentinel_hosts = [hosts["redis-a"], hosts["redis-b"], hosts["api"]]
        # every role's password, kept where `maskflow up` keeps them (stack.secrets_dir)
        credentials = roles.Credentials(workdir / "stack" / "secrets")
        passwords = {user: credentials.redis_password(user) for user in (*roles.REDIS_ROLES, *roles.SENTINEL_USERS)}
        cfg = replace(
            base,
            # the test's own view: Redis' admin user, and the Sentinels' password
            redis={"host": vip, "port": 6379, "master_name": MASTER_NAME,
                   "sentinels": tuple(f"{h.ip}:{SENTINEL_PORT}" for h in sentinel_hosts),
                   "username": "admin", "password": passwords["admin"],
                   "sentinel_password": credentials.secret("sentinel", "own-password")},
            minio={"endpoint": f"{hosts['m1'].ip}:9000", "access_key": "maskflow", "secret_key": secret,
                   "notify_file": str(REPO / "minio-notify.json")},
            model={"path": str(REPO / "models" / "segmentation.onnx")},
            models={"paths": {"general": str(REPO / "models" / "u2netp.onnx")}},
            api={"host": hosts["api"].ip, "port": 8000},
            stack={"data_dir": str(workdir / "stack")},
            # A killed worker's events come back once its lease runs out.  The lease must
            # outlast a Redis failover (about 2.5 s here, plus the clients' reconnect backoff of
            # up to 1 s and a heartbeat): with 3 s, live workers were reaped after the failover
            # and their events run twice.
            worker={"heartbeat": 1, "lease": 10},
        )

        # Redis: a master and a replica, each also listening on the floating address; the same
        # users on both (ACLs are not replicated), the replica logging in to the master as
        # `replica`.  The secrets are in files: the config file and the aclfile (hashes).
        acl = credentials.write("redis", "nodes.acl", roles.acl_file(cfg, passwords))
        conf = credentials.write("redis", "redis.conf", f"aclfile {acl}\nmasteruser replica\n"
                                                        f"masterauth {passwords['replica']}\n")
        common = ["--port", "6379", "--appendonly", "yes", "--appendfsync", "everysec",
                  "--maxmemory-policy", "noeviction", "--save", "", "--protected-mode", "no",
                  "--daemonize", "no"]
        procs = {}
        for host in redis_hosts:
            data = workdir / host.name
            data.mkdir()
            extra = [] if host.name == "redis-a" else ["--replicaof", hosts["redis-a"].ip, "6379"]
            procs[host.name] = lab.spawn(host, "redis", [str(redis_server), str(conf), "--bind", host.ip, vip,
                                                         "--dir", str(data), *common, *extra])
        wait_until(lambda: _redis_at(hosts["redis-b"], cfg).info("replication").get("master_link_status") == "up",
             "replica in sync", 30)

        # three Sentinels, quorum 2; the leader of a failover moves the floating address
        script = workdir / "move-vip.sh"
        script.write_text(VIP_SCRIPT.format(
            cases="\n".join(f"  {h.ip}) to={h.ns} ;;" for h in redis_hosts),
            namespaces=" ".join(h.ns for h in redis_hosts), vip=vip, log=workdir / "vip-moves.log"))
        script.chmod(0o755)
        for host in sentinel_hosts:
            conf = workdir / f"sentinel-{host.name}.conf"
            conf.touch(mode=0o600)
            conf.write_text("\n".join([
                f"port {SENTINEL_PORT}", f"bind {host.ip}", "protected-mode no", "daemonize no",
                f"dir {workdir}",
                f"sentinel monitor {MASTER_NAME} {hosts['redis-a'].ip} 6379 2",
                # Sentinel logs in to the Redis nodes as `sentinel`, and asks its clients and
                # the other Sentinels for a password of its own
                f"sentinel auth-user {MASTER_NAME} sentinel",
                f"sentinel auth-pass {MASTER_NAME} {passwords['sentinel']}",
                f"requirepass {cfg.redis.sentinel_password}",
                f"sentinel sentinel-pass {cfg.redis.sentinel_password}",
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000",
                f"sentinel failover-timeout {MASTER_NAME} 10000",
                f"sentinel parallel-syncs {MASTER_NAME} 1",
                f"sentinel client-reconfig-script {MASTER_NAME} {script}", ""]))
            procs[f"sentinel-{host.name}"] = lab.spawn(host, "sentinel", [str(redis_server), str(conf), "--sentinel"])

        def sentinels_agree() -> bool:
            for host in sentinel_hosts:
                state = _redis_at(host, cfg, SENTINEL_PORT).sentinel_master(MASTER_NAME)
                if state["num-other-sentinels"] != 2 or state["num-slaves"] != 1:
                    return False
            return True
        wait_until(sentinels_agree, "three Sentinels that know each other and the replica", 60, every=0.2)

        # MinIO on four hosts, one drive each, erasure-coded.  The drives are directories on this
        # machine's root filesystem, which MinIO refuses in distributed mode except in CI mode.
        (workdir / "drive").mkdir()
        (workdir / "queue").mkdir()
        drives = f"http://{lab.subnet}.{{{HOSTS['m1']}...{HOSTS['m4']}}}:9000{workdir}/drive"
        # MinIO reads its root user and its targets' Redis login (user `minio`) from files
        credentials.generate(cfg)
        minio_env = {**roles.inherited_env(),
                     "MINIO_ROOT_USER_FILE": str(credentials.write("root", "minio-root-user", cfg.minio.access_key)),
                     "MINIO_ROOT_PASSWORD_FILE": str(credentials.write("root", "minio-root-password",
                                                                       cfg.minio.secret_key)),
                     "MINIO_CONFIG_ENV_FILE": str(credentials.path("minio", "notify.env")),
                     "MINIO_BROWSER": "off", "MINIO_UPDATE": "off", "MINIO_API_SYNC_EVENTS": "on",
                     "MINIO_CI_CD": "on", **notify_env(cfg, str(workdir / "queue"))}
        photos = workdir / "photos"
        photos.mkdir()
        keys = make_photos(photos, PHOTOS, width=64)
        c = Cluster(lab, cfg, vip, mc, workdir / "mc", [str(minio), "server", "--quiet", drives],
                    minio_env, photos, keys, procs)
        for name in ("m1", "m2", "m3", "m4"):
            c.start_minio(name)
        for name in ("m1", "m2", "m3", "m4"):
            wait_until(lambda n=name: _alive(c.procs[n]) and c.minio_ready(n), f"MinIO {name} ready", 90, every=0.2)
        Stack(cfg).bootstrap()

        # the API on its host, a worker on each worker host, each on a MinIO node of its own
        c.procs["api"] = lab.spawn(hosts["api"], "api", [sys.executable, "-m", "maskflow.api"],
                                   env=c.service_env("m2", "api"), cwd=REPO)
        wait_until(lambda: _alive(c.procs["api"]) and requests.get(f"{cfg.api_url}/readyz", timeout=2).ok,
             "API ready", 60, every=0.2)
        c.start_worker("worker-a", "m1")
        c.start_worker("worker-b", "m3")
        sh(str(mc), "--config-dir", str(c.mc_config), "alias", "set", "mh",
           f"http://{cfg.minio.endpoint}", cfg.minio.access_key, cfg.minio.secret_key)
        c.results["setup_seconds"] = round(time.monotonic() - started, 1)
        yield c
    finally:
        problems = lab.close()
        left = sh("ip", "netns", "list", check=False).stdout
        shutil.rmtree(ARTIFACTS, ignore_errors=True)
        if (workdir / "logs").exists():
            shutil.copytree(workdir / "logs", ARTIFACTS)
        for extra in ("vip-moves.log",):
            if (workdir / extra).exists():
                shutil.copy(workdir / extra, ARTIFACTS / extra)
        if c is not None:
            c.results["teardown_problems"] = problems
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / "results.json").write_text(json.dumps(c.results, indent=2) + "\n")
        assert not problems, problems
        assert lab.tag not in left, left


# -- one batch ---------------------------------------------------------------------------------
def _batch_total(c: Cluster, prefix: str) -> int:
    summary = TaskStore(c.redis(), c.cfg).batch(prefix)
    return summary.total if summary else 0


def _live_workers(c: Cluster) -> list[str]:
    return [name for name in ("worker-a", "worker-b")
            if name in c.procs and c.procs[name].popen.poll() is None]


def _processed(c: Cluster) -> dict[str, tuple[str, int]]:
    """(run id, tasks completed) of each live worker, from its heartbeat."""
    out = {}
    for name in _live_workers(c):
        status = worker_status(c.redis(), name)
        out[name] = (status.get(Heartbeat.RUN, ""), int(status.get(Heartbeat.PROCESSED, 0)))
    return out


def _idle(c: Cluster) -> bool:
    r = c.redis()
    stored = [p for d in c.queue_dirs() if d.exists() for p in d.rglob("*") if p.is_file()]
    return not stored and r.llen(c.cfg.queue.events_key) == 0 and not any(
        r.llen(key) for key in r.scan_iter(inflight_key("*")))


def run_batch(c: Cluster, name: str, fault=None) -> dict:
    """Mirror the photos to input/<name>/, run `fault` meanwhile, and check every photo was
    completed exactly once.  Returns the batch's numbers."""
    prefix = f"input/{name}/"
    r = c.redis()
    before_completed = TaskStore(r, c.cfg).status_counts()["completed"]
    before_dead = dead_letter_count(r)
    before_runs = _processed(c)
    started = c.batch_started = time.monotonic()
    log = c.lab.workdir / "logs" / f"mc-{name}.log"
    with open(log, "wb") as out:
        mirror = subprocess.Popen([str(c.mc), "--config-dir", str(c.mc_config), "--no-color", "mirror",
                                   str(c.photos), f"mh/{c.cfg.minio.bucket}/{prefix}"],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        info = fault(c, prefix) if fault else {}
        assert mirror.wait(timeout=BATCH_TIMEOUT) == 0, log.read_text()[-2000:]
    finally:
        if mirror.poll() is None:
            mirror.kill()
            mirror.wait()
    uploaded = time.monotonic() - started

    def done() -> dict | None:
        # through the API on its own host, as a user would watch the batch
        body = requests.get(f"{c.cfg.api_url}/api/v1/batches/{prefix}", timeout=3).json()
        return body if body.get("done") == PHOTOS else None

    body = wait_until(done, f"batch {prefix}: {PHOTOS} done", BATCH_TIMEOUT, every=0.2)
    elapsed = time.monotonic() - started
    assert body["total"] == PHOTOS and body["counts"]["completed"] == PHOTOS, body

    # exactly once: every task completed once, the counters moved by exactly 200 ...
    r = c.redis()
    tasks = TaskStore(r, c.cfg)
    records = [tasks.find_by_key(prefix + key) for key in c.keys]
    assert all(t is not None and t.status == "completed" for t in records), \
        [t for t in records if t is None or t.status != "completed"][:3]
    assert tasks.status_counts()["completed"] - before_completed == PHOTOS
    assert dead_letter_count(r) == before_dead
    # ... 200 cut-outs and 200 masks ...
    s3 = minio_client(c.cfg)
    for folder in ("output", "masks"):
        found = {o.object_name for o in s3.list_objects(c.cfg.minio.bucket, f"{folder}/{name}/", recursive=True)}
        assert found == {f"{folder}/{name}/{key}.png" for key in c.keys}
    # ... and nothing left behind: every event MinIO stored sent, taken and settled
    wait_until(lambda: _idle(c), "nothing queued, in flight or in a MinIO queue_dir", 60, every=0.2)
    attempts = collections.Counter(t.attempts for t in records)
    # the heartbeats' completion counters, once every live worker has beaten since now
    now = time.time()
    wait_until(lambda: all(float(worker_status(c.redis(), w).get(Heartbeat.UPDATED, 0)) > now
                     for w in _live_workers(c)), "a heartbeat from every worker", 10)
    runs = {}
    for worker, (run, count) in _processed(c).items():
        prior_run, prior = before_runs.get(worker, ("", 0))
        runs[worker] = count - (prior if prior_run == run else 0)
    result = {"photos": PHOTOS, "seconds": round(elapsed, 1), "upload_seconds": round(uploaded, 1),
              "photos_per_second": round(PHOTOS / elapsed, 1),
              "attempts": {str(k): v for k, v in sorted(attempts.items())},
              "completions_by_live_worker": runs, **info}
    c.results[name] = result
    return result


# -- the scenarios -----------------------------------------------------------------------------
def test_batch_completes(cluster):
    result = run_batch(cluster, "plain")
    assert sum(result["completions_by_live_worker"].values()) == PHOTOS
    assert result["attempts"] == {"1": PHOTOS}
    assert all(n > 0 for n in result["completions_by_live_worker"].values()), \
        "both worker hosts take part"


def test_minio_host_killed_mid_batch(cluster):
    c = cluster

    def kill_m4(c: Cluster, prefix: str) -> dict:
        wait_until(lambda: _batch_total(c, prefix) >= 40, "40 tasks seen", BATCH_TIMEOUT, every=0.05)
        at = _batch_total(c, prefix)
        c.lab.kill_host(c.host("m4"))
        return {"killed": "m4", "killed_after_tasks_seen": at, "killed_at_seconds": c.since_start()}

    result = run_batch(c, "minio-down", kill_m4)
    assert sum(result["completions_by_live_worker"].values()) == PHOTOS
    assert result["attempts"] == {"1": PHOTOS}
    # the host comes back and rejoins the erasure set
    started = time.monotonic()
    c.start_minio("m4")
    wait_until(lambda: _alive(c.procs["m4"]) and c.minio_ready("m4"), "m4 back", 90, every=0.2)
    c.results["minio-down"]["rejoin_seconds"] = round(time.monotonic() - started, 1)


def test_worker_host_killed_mid_batch(cluster):
    c = cluster

    def kill_worker_b(c: Cluster, prefix: str) -> dict:
        r, host = c.redis(), c.host("worker-b")

        def frozen_holding_events() -> bool:
            # freeze the host, and kill it only if it holds events in flight at that moment
            if _batch_total(c, prefix) < 40 or not r.llen(inflight_key("worker-b")):
                return False
            c.lab.signal_host(host, signal.SIGSTOP)
            if r.llen(inflight_key("worker-b")):
                return True
            c.lab.signal_host(host, signal.SIGCONT)
            return False

        wait_until(frozen_holding_events, "worker-b holding events mid-batch", BATCH_TIMEOUT, every=0.02)
        killed_at, at = time.monotonic(), c.since_start()
        c.lab.kill_host(host)
        # what it held: these events must come back through the reaper
        stranded = []
        for item in r.lrange(inflight_key("worker-b"), 0, -1):
            try:
                stranded += [e.key for e in parse_message(unwrap(item).message)]
            except PoisonEvent:
                pass
        assert stranded, "worker-b held nothing when it was killed"
        wait_until(lambda: r.llen(inflight_key("worker-b")) == 0 and not r.sismember(WORKERS_KEY, "worker-b"),
             "worker-b's in-flight events requeued by the reaper", 30, every=0.05)
        return {"killed": "worker-b", "killed_at_seconds": at,
                "stranded_events": len(stranded), "stranded_keys": stranded,
                "requeued_after_seconds": round(time.monotonic() - killed_at, 1)}

    result = run_batch(c, "worker-down", kill_worker_b)
    tasks = TaskStore(c.redis(), c.cfg)
    for key in result["stranded_keys"]:
        task = tasks.find_by_key(key)
        assert task.status == "completed" and task.attempts <= 2, task
    # a task runs a second time only if the dead worker had begun it
    assert set(result["attempts"]) <= {"1", "2"}
    assert int(result["attempts"].get("2", 0)) <= result["stranded_events"]
    # one worker host alone: its rate
    one = run_batch(c, "one-worker-host")
    assert sum(one["completions_by_live_worker"].values()) == PHOTOS
    c.start_worker("worker-b", "m3")


def test_redis_master_killed_mid_batch(cluster):
    c = cluster
    a, b = c.host("redis-a"), c.host("redis-b")
    scripts = [TaskStore(c.redis(), c.cfg)._begin.sha, TaskStore(c.redis(), c.cfg)._finish.sha]
    # The replica has no script cache: after the failover, EVALSHA meets NOSCRIPT and redis-py
    # loads the script again.  (Redis does not replicate SCRIPT LOAD.)
    assert _redis_at(b, c.cfg).script_exists(*scripts) == [False, False]

    def kill_master(c: Cluster, prefix: str) -> dict:
        wait_until(lambda: _batch_total(c, prefix) >= 40, "40 tasks seen", BATCH_TIMEOUT, every=0.05)
        at = _batch_total(c, prefix)
        killed_at, since = time.monotonic(), c.since_start()
        c.lab.kill_host(a)  # the master and the Sentinel on its host
        sentinel = _redis_at(c.host("api"), c.cfg, SENTINEL_PORT)
        wait_until(lambda: sentinel.sentinel_get_master_addr_by_name(MASTER_NAME)[0] in (b.ip, b.ip.encode()),
             "Sentinel promoted redis-b", 60, every=0.05)
        promoted = time.monotonic() - killed_at
        wait_until(lambda: c.lab.ip(b, "-o", "addr", "show", "dev", "vip0").stdout.count(c.vip) == 1,
             "the floating address on redis-b", 60, every=0.05)
        moved = time.monotonic() - killed_at
        return {"killed": "redis-a", "killed_after_tasks_seen": at, "killed_at_seconds": since,
                "promoted_after_seconds": round(promoted, 1),
                "address_moved_after_seconds": round(moved, 1)}

    result = run_batch(c, "redis-failover", kill_master)
    assert result["attempts"] == {"1": PHOTOS}
    assert sum(result["completions_by_live_worker"].values()) == PHOTOS
    assert _redis_at(b, c.cfg).info("replication")["role"] == "master"
    assert _redis_at(b, c.cfg).script_exists(*scripts) == [True, True]
