"""`docker-compose up` for real: the images build, the stack comes up, and all three ways in work.

The stack is docker-compose.yml as a user runs it, with a generated .env: a project name of its
own, free loopback ports for the API and MinIO (Redis is not published), and base images built
here from Debian's packages in place of the public ones (tests/containers/docker_lab.py). Then:

* the original client code: POST to the API, poll GET /api/v1/tasks/{id}, fetch the results;
* `mc cp` with the model in the object's metadata;
* `mc mirror` drops of 100 photos, one with a worker container killed while it holds events
  and one with Redis restarted while the batch runs: every photo completes, nothing is lost;
* `docker-compose down -v` leaves no container, network or volume of the project;

and the same for the four-node MinIO override, with one MinIO container stopped mid-batch.
A machine where Docker cannot be installed or started fails these tests, never skips them.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
from minio import Minio

from checks import PHOTOS, make_photo, make_photos, png
from conftest import REPO
from docker_lab import Engine, Project, mc_env, mc_json
from maskflow.infra.domain.outputs import result_keys
from maskflow.infra.ops import install
from maskflow.infra.ops.console import say
from maskflow.infra.ops.processes import wait_until
from maskflow.infra.stores.keys import DEAD_LETTER_KEY, inflight_key
from maskflow.infra.wiring.settings import QueueConfig

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1200)]

BUCKET = "ai-segmentation"
BATCH = 100
BATCH_TIMEOUT = 300.0
ALIAS = "stack"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    engine = Engine.start(tmp_path_factory.mktemp("docker"))
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def build_args(engine):
    return engine.build_args()


@pytest.fixture(scope="module")
def mc_binary() -> Path:
    return install.resolve_binary(install.MC, os.environ.get("MASKFLOW_STACK_MC_BIN", ""))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    make_photos(root, BATCH)
    return root


def start(engine: Engine, build_args: dict, workdir: Path, *extra_files: str) -> Project:
    project = Project.create(engine, REPO, workdir, build_args, *extra_files)
    started = time.monotonic()
    try:
        project.up(workers=2)
        wait_until(lambda: requests.get(f"{project.api_url}/readyz", timeout=5).status_code == 200,
                   "the API in its container to be ready", 120, state=project.logs)
    except BaseException:
        say(f"compose logs:\n{project.logs()}")
        project.down()
        raise
    say(f"{project.name}: built and up in {time.monotonic() - started:.0f} s")
    return project


@pytest.fixture(scope="module")
def stack(engine, build_args, tmp_path_factory):
    project = start(engine, build_args, tmp_path_factory.mktemp("stack"))
    report_sizes(engine, project, build_args)
    try:
        yield project
    finally:
        project.down()


def report_sizes(engine: Engine, project: Project, build_args: dict) -> None:
    """Each image's size, and what it adds to its base (the part the public base does not change)."""
    bases = {"redis": "DEBIAN_IMAGE", "minio": "DEBIAN_IMAGE", "api": "PYTHON_IMAGE", "worker": "PYTHON_IMAGE"}
    for service, arg in bases.items():
        size, base = engine.image_size(f"{project.name}_{service}"), engine.image_size(build_args[arg])
        say(f"image {service}: {size / 1e6:.0f} MB, {(size - base) / 1e6:.0f} MB over its base")


def mc(binary: Path, project: Project, *args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run([str(binary), "--no-color", "--json", *args], env=mc_env(project, ALIAS),
                          capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 0, f"mc {' '.join(args)}: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
    return proc.stdout


def s3(project: Project) -> Minio:
    s = project.settings
    return Minio(project.s3_endpoint, s["MINIO_ROOT_USER"], s["MINIO_ROOT_PASSWORD"], secure=False)


def batch(project: Project, name: str) -> dict | None:
    r = project.http.get(f"{project.api_url}/api/v1/batches/input/{name}/", timeout=10)
    return r.json() if r.status_code == 200 else None


def wait_for_batch(project: Project, name: str, count: int = BATCH) -> dict:
    def finished():
        summary = batch(project, name)
        return summary if summary and summary["total"] == summary["done"] == count else None
    summary = wait_until(finished, f"batch {name} to finish", BATCH_TIMEOUT, every=1,
                         state=lambda: batch(project, name))
    assert summary["counts"]["completed"] == count, summary
    assert summary["failures_total"] == 0, summary["failures"]
    return summary


def drop(binary: Path, project: Project, source: Path, name: str, model: str | None = None) -> None:
    """`mc mirror` a folder into input/<name>/, as a user drops a batch."""
    attr = ["--attr", f"X-Amz-Meta-Model={model}"] if model else []
    mc(binary, project, "mirror", *attr, str(source), f"{ALIAS}/{BUCKET}/input/{name}/")


def assert_results_in_bucket(project: Project, source: Path, name: str) -> None:
    """Every photo under `source` has its cut-out and its mask, each the photo's size."""
    client = s3(project)
    photos = sorted(p for p in source.rglob("*") if p.is_file())
    assert photos
    for photo in photos:
        keys = result_keys(f"input/{name}/{photo.relative_to(source).as_posix()}")
        shape = cv2.imread(str(photo)).shape[:2]
        cutout = png(client.get_object(BUCKET, keys["output"]).read())
        mask = png(client.get_object(BUCKET, keys["mask"]).read())
        assert cutout.shape == shape + (4,) and mask.shape == shape, photo.name
        assert np.array_equal(cutout[:, :, 3], mask)


def assert_nothing_left_behind(project: Project, engine: Engine) -> None:
    """No event queued, in flight, dead-lettered, or still in a running MinIO's queue_dir."""
    assert project.redis_cli("LLEN", QueueConfig().events_key) == "0"  # docker-compose.yml's, the default
    assert project.redis_cli("LLEN", DEAD_LETTER_KEY) == "0"
    inflight = project.redis_cli("--scan", "--pattern", inflight_key("*")).split()
    assert all(project.redis_cli("LLEN", key) == "0" for key in inflight), inflight
    nodes = [cid for service in project.services() if service.startswith("minio")
             for cid in project.containers(service)]
    running = [cid for cid in nodes if engine("inspect", "--format", "{{.State.Running}}", cid).stdout.strip() == "true"]
    assert running
    for cid in running:
        stored = engine("exec", cid, "find", "/events", "-type", "f").stdout.split()
        assert stored == [], f"events MinIO still owes: {stored}"


def split(photos: Path, workdir: Path) -> tuple[Path, Path]:
    """The batch's photos in two folders of half each, so part of a batch can go in later."""
    halves = workdir / "first", workdir / "second"
    for i, photo in enumerate(sorted(photos.iterdir())):
        target = halves[i % 2] / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(photo.read_bytes())
    return halves


# -- the single-node stack -------------------------------------------------------------------
def test_services_run_as_their_own_users(stack, engine):
    for service in ("redis", "minio", "api", "worker", "worker-heavy", "webhooks"):
        for cid in stack.containers(service):
            assert engine("exec", cid, "id", "-u").stdout.strip() != "0", service
    assert len(stack.containers("worker")) == 2 and len(stack.containers("worker-heavy")) == 1
    assert len(stack.containers("webhooks")) == 1


def test_original_client_code(stack):
    """Design section 7, as written, plus the bearer token the stack asks for: submit with
    files={'file': ...}, then poll."""
    base = stack.api_url
    with open(PHOTOS / "chelsea.jpg", "rb") as f:
        response = requests.post(f"{base}/api/v1/tasks/segmentation", files={"file": f},
                                 headers=stack.auth)
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]

    def poll_result(task_id, max_polls=150):
        for _ in range(max_polls):
            data = requests.get(f"{base}/api/v1/tasks/{task_id}", headers=stack.auth).json()
            if data["status"] == "completed":
                return data["result"]
            elif data["status"] == "failed":
                raise Exception(data["error"])
            time.sleep(2)  # the contract's client poll interval
        raise TimeoutError("Task polling timeout")

    result = poll_result(task_id)
    shape = cv2.imread(str(PHOTOS / "chelsea.jpg")).shape[:2]
    # The presigned links point at MinIO's published port: MASKFLOW_MINIO_PUBLIC_ENDPOINT.
    segmented = png(requests.get(result["segmented_image_url"], timeout=10).content)
    mask = png(requests.get(result["mask_image_url"], timeout=10).content)
    assert segmented.shape == shape + (4,) and mask.shape == shape


# `general` is the light pool's (`worker`); u2net and portrait, fetched at build time, the heavy one's.
@pytest.mark.parametrize("model", ["general", "u2net", "portrait"])
def test_mc_cp_with_the_model_in_metadata(stack, mc_binary, tmp_path, model):
    photo = tmp_path / "shoe.jpg"
    photo.write_bytes((PHOTOS / "rocket.jpg").read_bytes())
    mc(mc_binary, stack, "cp", "--attr", f"X-Amz-Meta-Model={model}", str(photo),
       f"{ALIAS}/{BUCKET}/input/{model}/")

    def finished():
        r = stack.http.get(f"{stack.api_url}/api/v1/tasks", params={"key": f"input/{model}/shoe.jpg"}, timeout=10)
        return r.json() if r.status_code == 200 and r.json()["status"] in ("completed", "failed") else None
    task = wait_until(finished, "the mc cp upload's task", 120, every=0.5)
    assert task["status"] == "completed", task
    assert task["model"] == model
    assert_results_in_bucket(stack, tmp_path, model)


def test_refined_edges_run_in_the_unprivileged_worker(stack, mc_binary, tmp_path):
    """Alpha matting runs pymatting's numba kernels, compiled into the image at build time."""
    photo = tmp_path / "astronaut.jpg"
    photo.write_bytes(make_photo(0, 96, source="astronaut.jpg"))
    mc(mc_binary, stack, "cp", "--attr", "X-Amz-Meta-Refine=matting", str(photo),
       f"{ALIAS}/{BUCKET}/input/refined/")

    def finished():
        r = stack.http.get(f"{stack.api_url}/api/v1/tasks", params={"key": "input/refined/astronaut.jpg"}, timeout=10)
        return r.json() if r.status_code == 200 and r.json()["status"] in ("completed", "failed") else None
    task = wait_until(finished, "the refined task", 180, every=0.5)
    assert task["status"] == "completed", task
    assert task["options"]["refine"] == "matting"
    assert_results_in_bucket(stack, tmp_path, "refined")


def test_mirror_drop_survives_a_worker_killed_mid_batch(stack, engine, mc_binary, photos):
    # U^2-Netp (`general`) takes a good part of a second per photo: the batch runs long enough
    # for a worker to be caught holding events.
    drop(mc_binary, stack, photos, "kill", model="general")
    hostnames = {engine("inspect", "--format", "{{.Config.Hostname}}", cid).stdout.strip(): cid
                 for cid in stack.containers("worker")}

    def holder():
        for key in stack.redis_cli("--scan", "--pattern", inflight_key("*")).split():
            worker_host = key.rsplit(":", 2)[-2]  # worker ids are <hostname>:<pid>
            if worker_host in hostnames and int(stack.redis_cli("LLEN", key)) > 0:
                return key, hostnames[worker_host]
        return None
    key, victim = wait_until(holder, "a worker to hold events", 120, every=0.2)
    engine("kill", victim)
    summary = batch(stack, "kill")
    assert summary is None or summary["done"] < BATCH, "the kill came after the batch"
    wait_for_batch(stack, "kill")
    # The survivor's reaper hands the victim's events back once its lease (30 s) runs out; those
    # whose fast-target twin was done meanwhile are then dropped as duplicates.
    wait_until(lambda: stack.redis_cli("LLEN", key) == "0", "the victim's events handed back", 120,
               every=1)
    assert_nothing_left_behind(stack, engine)
    assert_results_in_bucket(stack, photos, "kill")
    stack.compose("up", "--detach", "--scale", "worker=2", "--no-recreate")  # the victim back, for later tests


def test_mirror_drop_survives_redis_restarted_mid_batch(stack, engine, mc_binary, photos, tmp_path):
    first, second = split(photos, tmp_path)
    drop(mc_binary, stack, first, "redis", model="general")
    wait_until(lambda: (batch(stack, "redis") or {}).get("done", 0) > 0, "the first photos done", 120)
    redis = stack.container("redis")
    engine("stop", "--time", "10", redis)
    summary = None
    try:
        # Uploads go on while Redis is down: MinIO keeps their events in its queue_dir.
        drop(mc_binary, stack, second, "redis", model="general")
    finally:
        engine("start", redis)
    summary = wait_until(lambda: batch(stack, "redis"), "the API to read Redis again", 60)
    assert summary["done"] < BATCH, "Redis came back after the batch was done"
    wait_for_batch(stack, "redis")
    assert_nothing_left_behind(stack, engine)
    assert_results_in_bucket(stack, first, "redis")
    assert_results_in_bucket(stack, second, "redis")


def test_down_leaves_no_container_network_or_volume(stack):
    assert stack.leftovers()  # what there is to remove, found by the same query
    stack.down()
    assert stack.leftovers() == {}


# -- four MinIO nodes ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(engine, build_args, tmp_path_factory):
    project = start(engine, build_args, tmp_path_factory.mktemp("cluster"),
                    "infra/ops/docker/cluster.compose.yml")
    try:
        yield project
    finally:
        project.down()


def test_cluster_forms_with_erasure_coding_and_takes_a_drop(cluster, engine, mc_binary, photos):
    (info,) = mc_json(mc(mc_binary, cluster, "admin", "info", ALIAS))
    backend = info["info"]["backend"]
    assert backend["backendType"] == "Erasure", backend
    assert backend["onlineDisks"] == 4 and backend["offlineDisks"] == 0, backend
    assert len(info["info"]["servers"]) == 4
    drop(mc_binary, cluster, photos, "cluster")
    wait_for_batch(cluster, "cluster")
    assert_nothing_left_behind(cluster, engine)
    assert_results_in_bucket(cluster, photos, "cluster")


def test_cluster_keeps_working_with_a_minio_node_stopped_mid_batch(cluster, engine, mc_binary, photos,
                                                                    tmp_path):
    first, second = split(photos, tmp_path)
    drop(mc_binary, cluster, first, "degraded", model="general")
    wait_until(lambda: (batch(cluster, "degraded") or {}).get("done", 0) > 0, "the first photos done", 120)
    engine("stop", "--time", "10", cluster.container("minio4"))
    assert batch(cluster, "degraded")["done"] < BATCH // 2, "the node stopped after the first half"
    drop(mc_binary, cluster, second, "degraded", model="general")  # uploads keep working
    wait_for_batch(cluster, "degraded")
    assert_nothing_left_behind(cluster, engine)
    assert_results_in_bucket(cluster, first, "degraded")
    assert_results_in_bucket(cluster, second, "degraded")


def test_cluster_down_leaves_no_container_network_or_volume(cluster):
    assert cluster.leftovers()
    cluster.down()
    assert cluster.leftovers() == {}
