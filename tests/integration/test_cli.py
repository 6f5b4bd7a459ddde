"""Issue 6 acceptance: `maskflow submit/status/batch` and the documented `mc mirror` path,
run as real processes against a real stack (Redis, MinIO, API, worker) with a token on.
Issue 14: `--model` on submit and batch, and `mc mirror --attr` as documented."""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from checks import PHOTOS, iou, make_photos, reference_mask
from conftest import REPO, app_stack, wait_for_task
from maskflow.infra.ops import install
from maskflow.infra.ops.processes import free_port
from maskflow.infra.stores.objects import ObjectStore
from maskflow.infra.stores.tasks import TaskStore, derive_task_id
from maskflow.infra.wiring.config import env_for

TOKEN = "cli-test-token"
MAX_WAIT = 240.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with app_stack(tmp_path_factory.mktemp("cli-stack"), workers=1, api={"token": TOKEN},
                   task={"poll_interval": 1}) as s:
        yield s


def _env(cfg, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASKFLOW_")}
    return {**env, **env_for(cfg), **extra}


def maskflow(stack, *args, cwd: Path, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maskflow.infra.sdk.cli", *args], cwd=cwd, env=_env(stack.cfg),
                          capture_output=True, text=True, timeout=MAX_WAIT, **popen)


def _err_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def _read(path: Path, flags=cv2.IMREAD_UNCHANGED) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    assert img is not None, path
    return img


def _check_pair(cutout: Path, mask: Path, source: Path) -> None:
    src = cv2.imread(str(source), cv2.IMREAD_UNCHANGED)
    c, m = _read(cutout), _read(mask)
    assert c.ndim == 3 and c.shape[2] == 4, cutout
    assert m.ndim == 2 and m.shape == c.shape[:2], mask
    if "exif6" not in source.name:  # rotated on decode
        assert m.shape == src.shape[:2]
    assert np.array_equal(c[:, :, 3], m)


def _stem_path(rel: str) -> str:
    return str(Path(rel).with_suffix(""))


def test_submit_wait_out_writes_cutout_and_mask(stack, tmp_path):
    (tmp_path / "photo.jpg").write_bytes((PHOTOS / "chelsea.jpg").read_bytes())
    proc = maskflow(stack, "submit", "photo.jpg", "--wait", "--out", "out/", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    task_id = re.search(r"\b([0-9a-f]{32})\b", proc.stdout).group(1)
    assert "completed" in proc.stderr and "Traceback" not in proc.stderr
    _check_pair(tmp_path / "out/photo.png", tmp_path / "out/photo.mask.png", tmp_path / "photo.jpg")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["photo.mask.png", "photo.png"]

    status = maskflow(stack, "status", task_id, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert re.search(r"^status\s+completed$", status.stdout, re.M)
    assert "mask" in status.stdout and "http" in status.stdout
    assert not re.search(r"^model", status.stdout, re.M)  # it named none


def test_submit_presigned_and_status_by_key(stack, tmp_path):
    proc = maskflow(stack, "submit", str(PHOTOS / "coffee.jpg"), str(PHOTOS / "camera_gray.png"),
                    "--presigned", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ids = re.findall(r"^([0-9a-f]{32})\s", proc.stdout, re.M)
    assert len(ids) == 2
    _check_pair(tmp_path / "out/coffee.png", tmp_path / "out/coffee.mask.png", PHOTOS / "coffee.jpg")
    _check_pair(tmp_path / "out/camera_gray.png", tmp_path / "out/camera_gray.mask.png",
                PHOTOS / "camera_gray.png")
    # The API names presigned objects input/<task_id>.<ext>.
    by_key = maskflow(stack, "status", "--key", f"input/{ids[0]}.jpg", "--json", cwd=tmp_path)
    assert by_key.returncode == 0, by_key.stderr
    assert f'"task_id": "{ids[0]}"' in by_key.stdout and '"completed"' in by_key.stdout


def test_errors_are_one_line_with_documented_exit_codes(stack, tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image at all\n")
    photo = str(PHOTOS / "chelsea.jpg")
    cases = [
        (["submit", photo, "--api-url", f"http://127.0.0.1:{free_port()}"], 2, "cannot reach the API"),
        (["submit", photo, "--token", "wrong"], 2, "401"),
        (["batch", str(PHOTOS), "--token", "wrong"], 2, "401"),
        (["submit", "notes.jpg", "--wait"], 1, "notes.jpg"),
        (["submit", "missing.jpg"], 2, "no such file"),
        (["status", "0" * 32], 2, "no task"),
    ]
    for args, code, text in cases:
        proc = maskflow(stack, *args, cwd=tmp_path)
        lines = _err_lines(proc)
        assert proc.returncode == code, (args, proc.returncode, proc.stderr)
        assert len(lines) == 1 and text in lines[0], (args, lines)
        assert lines[0].startswith("maskflow: "), lines
    # Named .jpg, so the presigned upload goes through and the worker fails it.
    proc = maskflow(stack, "submit", "notes.jpg", "--presigned", "--wait", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert _err_lines(proc)[-1].startswith("maskflow: FAILED notes.jpg: "), proc.stderr
    assert len(_err_lines(proc)[-1]) > 40 and "Traceback" not in proc.stderr


def test_batch_100_nested_interrupt_then_rerun_finishes_rest(stack, tmp_path):
    photos = tmp_path / "photos"
    rels = make_photos(photos, 100, nested=True)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "maskflow.infra.sdk.cli", "batch", str(photos), "--prefix", "hundred",
            "--out", str(out)]
    # Ctrl-C as in a terminal: a job started in the background by a non-interactive shell
    # (a CI runner's `cmd &`) inherits SIGINT ignored, and Python then leaves it ignored.
    first = subprocess.Popen(argv, cwd=tmp_path, env=_env(stack.cfg), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    worker = stack.running("worker-0")
    assert worker
    stopped = False
    try:
        # Once some results are in, freeze the worker so the run is surely mid-way, then Ctrl-C.
        deadline = time.monotonic() + MAX_WAIT
        # a pair counts once its cut-out is there (the mask is written first)
        while len([p for p in out.rglob("*.png") if not p.name.endswith(".mask.png")]) < 5:
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "no results appeared"
            time.sleep(0.05)
        os.killpg(worker, signal.SIGSTOP)
        stopped = True
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
    finally:
        if stopped:
            os.killpg(worker, signal.SIGCONT)
        if first.poll() is None:
            first.kill()
    assert first.returncode == 2, err
    assert "interrupted" in err.splitlines()[-1] and "Traceback" not in err
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]
    for p in out.rglob("*.png"):  # whatever is there is whole
        _read(p)
    # A pair is done once its cut-out is there (the mask is written first).
    finished = [r for r in rels if (out / (_stem_path(r) + ".png")).exists()]
    assert 5 <= len(finished) < len(rels)
    done = {p: p.stat().st_mtime_ns for r in finished
            for p in (out / (_stem_path(r) + ".png"), out / (_stem_path(r) + ".mask.png"))}

    second = maskflow(stack, "batch", str(photos), "--prefix", "hundred", "--out", str(out),
                      cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert f"{len(finished)} already done" in second.stderr
    assert "100 completed, 0 failed" in second.stderr
    for p, mtime in done.items():  # nothing done was written again
        assert p.stat().st_mtime_ns == mtime, p
    for rel in rels:
        stem = _stem_path(rel)
        _check_pair(out / f"{stem}.png", out / f"{stem}.mask.png", photos / rel)
    assert len(list(out.rglob("*.png"))) == 200
    # The same tree: every result folder is an input folder.
    assert {p.parent.relative_to(out) for p in out.rglob("*.png")} == \
        {(photos / r).parent.relative_to(photos) for r in rels}

    status = maskflow(stack, "status", "--batch", "input/hundred/", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("input/hundred/: 100/100 done")


def test_batch_via_api_lists_failures_and_keeps_tree(stack, tmp_path):
    photos = tmp_path / "mixed"
    rels = make_photos(photos, 6, nested=True)
    (photos / "a/broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 50)  # JPEG magic, no image
    (photos / "notes.txt").write_text("ignored")
    proc = maskflow(stack, "batch", str(photos), "--via", "api", "--out", "res", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    failed = [l for l in proc.stderr.splitlines() if "FAILED" in l]
    assert len(failed) == 1 and "a/broken.jpg" in failed[0] and len(failed[0]) > 40, failed
    assert "6 completed, 1 failed" in proc.stderr
    for rel in rels:
        stem = _stem_path(rel)
        _check_pair(tmp_path / "res" / f"{stem}.png", tmp_path / "res" / f"{stem}.mask.png",
                    photos / rel)
    assert (tmp_path / "res/.maskflow-batch.json").exists()


def _documented_mc_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- mc-mirror-commands", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_documented_mc_mirror_commands_process_100_photos(stack, tmp_path):
    cfg = stack.cfg
    mc_bin = install.resolve_binary(install.MC, cfg.stack.mc_bin)
    rels = make_photos(tmp_path / "photos", 100, nested=True)
    lines = _documented_mc_commands()
    assert [l.split()[:2] for l in lines] == [["mc", "alias"], ["mc", "mirror"],
                                             ["maskflow", "status"], ["mc", "mirror"],
                                             ["mc", "mirror"]]
    name = f"mirror{os.getpid()}"
    # MC_CONFIG_DIR keeps the alias out of ~/.mc; the commands themselves run as documented.
    env = _env(cfg, MC_CONFIG_DIR=str(tmp_path / "mc"))
    for line in lines:
        line = line.replace("http://127.0.0.1:9000", f"http://{cfg.minio.endpoint}")
        line = line.replace("holiday", name)
        argv = shlex.split(line)
        if argv[0] == "mc":
            proc = subprocess.run([str(mc_bin), *argv[1:]], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=MAX_WAIT)
            assert proc.returncode == 0, (line, proc.stdout, proc.stderr)
            continue
        # `maskflow status --batch`: repeat until the whole batch is done (a polling loop).
        deadline = time.monotonic() + MAX_WAIT
        while True:
            proc = subprocess.run([sys.executable, "-m", "maskflow.infra.sdk.cli", *argv[1:]], cwd=tmp_path,
                                  env=env, capture_output=True, text=True, timeout=60)
            if "100/100 done" in proc.stdout:
                break
            assert time.monotonic() < deadline, (proc.stdout, proc.stderr)
            time.sleep(0.5)
        assert proc.returncode == 0 and "completed 100" in proc.stdout, proc.stdout
    for rel in rels:
        _check_pair(tmp_path / "results/output" / f"{rel}.png",
                    tmp_path / "results/masks" / f"{rel}.png", tmp_path / "photos" / rel)
    assert len(list((tmp_path / "results").rglob("*.png"))) == 200


# -- issue 14: --model ----------------------------------------------------------------------------
# Scene photos where the two models disagree (their references overlap at IoU 0.48 and 0.03),
# so a mask that matches one reference at 0.99 cannot be the other's.
SCENES = ("coffee.jpg", "motorcycle.jpg")


def _made_by(mask_path: Path, photo: str, model: str) -> None:
    """The mask is `model`'s for `photo`, and not the other model's."""
    mask = _read(mask_path) / 255
    other = "person" if model == "general" else "general"
    assert iou(reference_mask(photo, model), reference_mask(photo, other)) < 0.9, photo
    assert iou(mask, reference_mask(photo, model)) >= 0.99, (mask_path, f"not {model}'s mask")


def _scene_folder(root: Path, photos=SCENES) -> Path:
    root.mkdir()
    for name in photos:
        (root / name).write_bytes((PHOTOS / name).read_bytes())
    return root


def test_unknown_model_is_refused_before_anything_is_sent(stack, tmp_path):
    for args in (["submit", str(PHOTOS / "coffee.jpg"), "--model", "nope"],
                 ["batch", str(PHOTOS), "--model", "nope"]):
        proc = maskflow(stack, *args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "invalid choice: 'nope' (choose from 'person', 'general', 'u2netp', 'u2net', 'portrait')" in proc.stderr
        assert not proc.stdout  # no task id: nothing was submitted


def test_submit_model_general_and_status_shows_it(stack, tmp_path):
    proc = maskflow(stack, "submit", str(PHOTOS / "coffee.jpg"), "--model", "general",
                    "--out", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    task_id = re.search(r"^([0-9a-f]{32})\s", proc.stdout, re.M).group(1)
    _made_by(tmp_path / "out/coffee.mask.png", "coffee.jpg", "general")
    status = maskflow(stack, "status", task_id, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert re.search(r"^model\s+general$", status.stdout, re.M), status.stdout

    # The presigned path: the model is signed into the upload.
    proc = maskflow(stack, "submit", str(PHOTOS / "motorcycle.jpg"), "--presigned",
                    "--model", "general", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    _made_by(tmp_path / "out/motorcycle.mask.png", "motorcycle.jpg", "general")


def test_batch_model_general_writes_u2netp_masks_and_reruns_follow_the_model(stack, tmp_path):
    photos = _scene_folder(tmp_path / "scenes")
    out = tmp_path / "out"
    base = ["batch", str(photos), "--prefix", "scenes-s3"]

    first = maskflow(stack, *base, "--model", "general", "--out", str(out), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "model general" in first.stderr and "2 completed, 0 failed" in first.stderr
    for name in SCENES:
        _made_by(out / f"{Path(name).stem}.mask.png", name, "general")
    written = {p: p.stat().st_mtime_ns for p in out.glob("*.png")}

    # The same command again: everything is done, nothing is written.
    again = maskflow(stack, *base, "--model", "general", "--out", str(out), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "2 already done" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.png")} == written

    # Same bytes, but the objects in the bucket asked for general: without --model they are
    # uploaded again, and the new results are the default model's.
    default_out = tmp_path / "default-out"
    second = maskflow(stack, *base, "--out", str(default_out), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "2 completed, 0 failed" in second.stderr
    for name in SCENES:
        _made_by(default_out / f"{Path(name).stem}.mask.png", name, "person")

    # Results in --out made by general are not taken for done by a run without --model.
    third = maskflow(stack, *base, "--out", str(out), cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert "0 already done" in third.stderr
    for name in SCENES:
        _made_by(out / f"{Path(name).stem}.mask.png", name, "person")


def test_batch_via_api_with_model(stack, tmp_path):
    photos = _scene_folder(tmp_path / "scene", ("coffee.jpg",))
    base = ["batch", str(photos), "--via", "api", "--out", "res"]
    proc = maskflow(stack, *base, "--model", "general", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    _made_by(tmp_path / "res/coffee.mask.png", "coffee.jpg", "general")
    # Without --model the task kept in the state file is not reused: it asked for general.
    proc = maskflow(stack, *base, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "0 already done" in proc.stderr
    _made_by(tmp_path / "res/coffee.mask.png", "coffee.jpg", "person")


def test_documented_mc_mirror_attr_names_the_model(stack, tmp_path):
    cfg, m = stack.cfg, stack.cfg.minio
    mc_bin = install.resolve_binary(install.MC, cfg.stack.mc_bin)
    _scene_folder(tmp_path / "products", ("motorcycle.jpg",))
    env = _env(cfg, MC_CONFIG_DIR=str(tmp_path / "mc"))
    line = next(l for l in (REPO / "README.md").read_text().splitlines()
                if l.startswith("mc mirror --attr"))
    argv = shlex.split(line.replace("input/products/", "input/mirror-attr/"))
    for args in (["alias", "set", "maskflow", f"http://{m.endpoint}", m.access_key, m.secret_key],
                 argv[1:]):
        proc = subprocess.run([str(mc_bin), *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=MAX_WAIT)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    key = "input/mirror-attr/motorcycle.jpg"
    task = wait_for_task(TaskStore(stack.redis_client(), cfg), derive_task_id(m.bucket, key),
                         timeout=MAX_WAIT)
    assert task is not None and task.status == "completed", task
    assert task.model == "general"
    (tmp_path / "mask.png").write_bytes(ObjectStore(cfg).get(task.results["mask"]).data)
    _made_by(tmp_path / "mask.png", "motorcycle.jpg", "general")
