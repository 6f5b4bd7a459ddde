"""maskflow beside what a user would run instead, in one go, on the same photos (issue 11).

Generates N photos (deterministic, from the fixture photos; `--size`, `--mix`) into one temporary
folder, then runs, one after the other on this machine:

    bare     the naive in-process loop: /work/shared/peers/bare_loop.py, 2 processes, for
             `--seconds` (run in place with this interpreter, never imported)
    maskflow a private stack as `maskflow up` starts it (Redis, MinIO, the API and
             `stack.workers` workers of `worker.concurrency` threads, default config) on free
             loopback ports; `mc mirror PHOTOS alias/ai-segmentation/input/<batch>/`, timed from
             mc's start until the batch counters show all N done; all must be completed
    celery   /work/shared/peers/celery_peer.py: its worker (2 prefork processes) on the same
             MinIO and Redis (db 5), then `celery_peer.py drive PHOTOS N` (it pre-uploads N
             objects, then times their drain); its images/s is parsed from its output
    rembg    `rembg p -m u2netp IN OUT` on the first M photos, against maskflow draining the
             same M photos with every upload naming the `general` model
             (`mc mirror --attr X-Amz-Meta-Model=general`)
    u2net    `rembg p -m u2net IN OUT` on the first K photos, against maskflow draining them
             with the `u2net` model, which `maskflow up` serves from a pool of its own (one
             process, a model run per core); also the two's masks compared, photo by photo

Celery and rembg run from scratch virtual environments created on first use under
~/.cache/maskflow/peers/ (celery-venv: celery[redis] + the onnxruntime, opencv, numpy and
minio versions of this project's .venv, so the model costs the same; rembg-venv:
rembg[cpu,cli]==2.0.86); they are not project dependencies.  rembg finds the project's
u2netp.onnx and the install step's u2net.onnx (md5-checked) in a private U2NET_HOME
(~/.cache/maskflow/peers/u2net), so nothing is downloaded and the user's home is not touched.

Measured per run: images/s, maskflow / peer, CPU milliseconds per image by process group, and
peak RSS.  CPU is utime+stime from /proc/<pid>/stat over each service's whole process tree
(children included: live ones read directly, reaped ones through cutime+cstime), between the
start and the end of the run; a command this script starts and waits for (mc, bare_loop.py,
the Celery driver, rembg) is measured by wait4()'s rusage, which covers the command and every
child it reaped.  Peak RSS is VmHWM from /proc/<pid>/status, summed over a group's processes:
for services the high-water mark is reset (clear_refs 5) at the start of each run, for
commands it is polled every 0.25 s (plus wait4's ru_maxrss for the largest single process).

    .venv/bin/python tests/bench/compare.py                       # 800 photos, 40 for U^2-Netp
    .venv/bin/python tests/bench/compare.py --photos 100 --u2netp-photos 10 --seconds 8
    .venv/bin/python tests/bench/compare.py --skip celery,rembg,u2net   # only bare loop vs maskflow
    .venv/bin/python tests/bench/compare.py --skip bare,maskflow,celery,rembg --u2net-photos 40

Prints one Markdown table (for the README) and the exact commands.  Not collected by pytest.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from checks import iou, jpeg_with_orientation, make_photo, pipeline_idle, png  # noqa: E402
from conftest import make_config  # noqa: E402
from maskflow.infra.domain.catalog import GENERAL  # noqa: E402
from maskflow.infra.ops import install  # noqa: E402
from maskflow.infra.ops.stack import Stack  # noqa: E402
from maskflow.infra.stores.tasks import TaskStore  # noqa: E402
from maskflow.infra.wiring.config import StackConfig, WorkerConfig, load_config  # noqa: E402
from maskflow.infra.wiring.connections import minio_client  # noqa: E402

PEERS = Path("/work/shared/peers")
SCRATCH = Path.home() / ".cache" / "maskflow" / "peers"
PERSON_MODEL = ROOT / "models" / "segmentation.onnx"
# rembg's models, by its names: our file, and the md5 rembg's sessions check it by
REMBG_MODELS = {"u2netp": (ROOT / "models" / "u2netp.onnx", "8e83ca70e441ab06c318d82300c84806"),
                "u2net": (load_config(env={}).model_files["u2net"].path, "60024c5c889badc19c04ad937298a77b")}
REMBG = "rembg[cpu,cli]==2.0.86"
CONTESTANTS = ("bare", "maskflow", "celery", "rembg", "u2net")
CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL = 0.05        # interval of every condition polled here (batch counters, readiness)
SAMPLE = 0.25      # interval of the VmHWM sampling of commands


class BenchError(RuntimeError):
    """A contestant could not be run; the message says why (its row shows it)."""


# -- /proc -------------------------------------------------------------------------------------

def _stat(pid: int) -> tuple[int, int, int]:
    """(ppid, own utime+stime, reaped children's cutime+cstime), in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                children[_stat(int(entry.name))[0]].append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_cpu(root: int) -> float:
    """CPU seconds of a live process and all its descendants, reaped ones included."""
    ticks = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError, IndexError, ValueError):
            _, own, reaped = _stat(pid)
            ticks += own + reaped
    return ticks / CLK_TCK


def vm_hwm_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_hwm(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cpu_ticks() -> list[int]:
    """The whole machine's CPU ticks so far (all cores), by /proc/stat's first eight fields:
    user nice system idle iowait irq softirq steal."""
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def busy_ticks(ticks: list[int]) -> int:
    return sum(ticks) - ticks[3] - ticks[4]  # minus idle and iowait


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores; /proc/stat)."""
    return busy_ticks(cpu_ticks()) / CLK_TCK


class Window:
    """How much CPU the rest of the machine (other users' processes) took during a run:
    machine busy time minus what the run's processes and this script used, per second."""

    def __init__(self):
        self.t0, self.busy0, self.self0 = time.perf_counter(), busy_seconds(), self._own()

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system

    def others(self, ours: float) -> float:
        wall = time.perf_counter() - self.t0
        foreign = busy_seconds() - self.busy0 - (self._own() - self.self0) - ours
        return max(foreign, 0.0) / wall if wall > 0 else 0.0


def wait_quiet(limit: float, max_wait: float, ours: Callable[[], list[int]],
               log: Callable[[str], None]) -> None:
    """Before a run: wait (at most max_wait s) until other users' processes take less than
    `limit` cores, measured over 2 s windows; `ours` gives the roots of our idle services."""
    if max_wait <= 0:
        return
    deadline = time.monotonic() + max_wait
    told = 0.0
    while True:
        roots = ours()
        before = sum(tree_cpu(r) for r in roots)
        window = Window()
        time.sleep(2.0)  # the measurement window, not a synchronisation
        others = window.others(sum(tree_cpu(r) for r in roots) - before)
        if others < limit:
            return
        if time.monotonic() > deadline:
            log(f"the machine is still shared ({others:.2f} cores busy elsewhere); running anyway")
            return
        if time.monotonic() - told > 30:
            told = time.monotonic()
            log(f"waiting (up to {max_wait:.0f} s) for a quieter machine: "
                f"{others:.2f} cores busy elsewhere")


# -- measurements --------------------------------------------------------------------------------

@dataclass
class Usage:
    """One process group's share of a run."""
    name: str
    cpu_s: float
    rss_mb: float
    procs: int = 1


class ServiceGroup:
    """Long-running processes (trees): CPU and peak RSS between begin() and end()."""

    def __init__(self, name: str, roots: list[int]):
        self.name, self.roots = name, [r for r in roots if r]
        self.cpu0 = 0.0
        self.hwm_reset = True

    def begin(self) -> None:
        for root in self.roots:
            for pid in process_tree(root):
                self.hwm_reset &= reset_hwm(pid)
        self.cpu0 = sum(tree_cpu(r) for r in self.roots)

    def end(self) -> Usage:
        pids = [pid for root in self.roots for pid in process_tree(root)]
        return Usage(self.name, sum(tree_cpu(r) for r in self.roots) - self.cpu0,
                     sum(vm_hwm_mb(pid) for pid in pids), len(pids))


class Command:
    """A command this script starts and reaps itself: exact end time, wait4() rusage, and its
    process tree's VmHWM sampled while it runs.  Output goes to `log`."""

    live: set[Command] = set()  # started and not yet reaped: killed when the script exits

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None):
        self.argv, self.log = argv, log
        self.peaks: dict[int, float] = {}
        self.returncode: int | None = None
        self.rusage = None
        self.started = time.perf_counter()
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        Command.live.add(self)
        self.ended = 0.0
        self._done = threading.Event()
        threading.Thread(target=self._reap, daemon=True).start()
        threading.Thread(target=self._sample, daemon=True).start()

    def _reap(self) -> None:
        _, status, self.rusage = os.wait4(self.proc.pid, 0)
        self.ended = time.perf_counter()
        self.returncode = self.proc.returncode = os.waitstatus_to_exitcode(status)
        Command.live.discard(self)
        self._done.set()

    def _sample(self) -> None:
        tree, refreshed = [self.proc.pid], 0.0
        while not self._done.is_set():
            if time.monotonic() - refreshed > 1.0:
                tree, refreshed = process_tree(self.proc.pid), time.monotonic()
            for pid in tree:
                hwm = vm_hwm_mb(pid)
                if hwm:
                    self.peaks[pid] = max(self.peaks.get(pid, 0.0), hwm)
            self._done.wait(SAMPLE)

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            self.kill()
            self._done.wait()
            raise BenchError(f"{shlex.join(self.argv[:3])} ... ran longer than {timeout:.0f} s"
                             + tail(self.log))
        return self.returncode

    def kill(self) -> None:
        if not self.finished:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def usage(self, name: str) -> Usage:
        cpu = self.rusage.ru_utime + self.rusage.ru_stime
        rss = sum(self.peaks.values()) or self.rusage.ru_maxrss / 1024
        return Usage(name, cpu, max(rss, self.rusage.ru_maxrss / 1024), max(len(self.peaks), 1))

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def tail(log: Path, lines: int = 15) -> str:
    if not log.exists():
        return ""
    text = log.read_text(errors="replace").strip().splitlines()[-lines:]
    return f"\n  last lines of {log}:\n    " + "\n    ".join(text) if text else ""


def poll_until(condition: Callable[[], bool], what: str, timeout: float,
               alive: Callable[[], None] | None = None) -> None:
    """Poll `condition` every POLL s; `alive` raises if what we wait on has died."""
    deadline = time.monotonic() + timeout
    while not condition():
        if alive:
            alive()
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not after {timeout:.0f} s")
        time.sleep(POLL)


@dataclass
class Run:
    key: str
    label: str
    images: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    usage: list[Usage] = field(default_factory=list)
    note: str = ""
    error: str = ""
    others: float = 0.0   # cores busy with other users' work during the run
    steady: float = 0.0   # rembg: images/s from its first to its last cut-out
    batch: str = ""       # maskflow: the batch's name under input/
    out: Path | None = None  # rembg: its cut-outs

    def cpu_ms(self) -> float:
        return 1000 * sum(u.cpu_s for u in self.usage) / self.images if self.images else 0.0


# -- scratch virtual environments -------------------------------------------------------------

def scratch_venv(name: str, packages: list[str], log: Callable[[str], None]) -> Path:
    """~/.cache/maskflow/peers/<name> with `packages`, made on first use; its python."""
    venv = SCRATCH / name
    python = venv / "bin" / "python"
    marker = venv / ".maskflow-packages"
    spec = "\n".join(packages)
    if python.exists() and marker.exists() and marker.read_text() == spec:
        return python
    SCRATCH.mkdir(parents=True, exist_ok=True)
    pip_log = SCRATCH / f"{name}.pip.log"
    log(f"creating {venv} with {' '.join(packages)} (pip log: {pip_log})")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    with open(pip_log, "wb") as out:
        done = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check",
                               *packages], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        errors = [line for line in pip_log.read_text(errors="replace").splitlines()
                  if "ERROR" in line or "error:" in line]
        raise BenchError(f"pip install {' '.join(packages)} failed (exit {done.returncode}): "
                         + (" / ".join(errors[-4:]) or "see " + str(pip_log)))
    marker.write_text(spec)
    return python


def venv_versions(python: Path, dists: list[str]) -> str:
    code = ("import importlib.metadata as m, sys\n"
            "print(', '.join(f'{d} {m.version(d)}' for d in sys.argv[1:]))")
    done = subprocess.run([str(python), "-c", code, *dists], capture_output=True, text=True)
    return done.stdout.strip() or done.stderr.strip().splitlines()[-1]


# -- the contestants ------------------------------------------------------------------------------

def run_bare(photos: Path, seconds: float, work: Path, commands: list[str]) -> Run:
    run = Run("bare", "naive loop, 2 processes (`bare_loop.py`)")
    argv = [sys.executable, str(PEERS / "bare_loop.py"), str(PERSON_MODEL), str(photos),
            "--procs", "2", "--seconds", f"{seconds:g}"]
    commands.append(shlex.join(argv))
    window = Window()
    cmd = Command(argv, work / "bare_loop.log", env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    if cmd.wait(seconds + 600):
        raise BenchError(f"bare_loop.py exited with {cmd.returncode}" + tail(cmd.log))
    found = re.search(r"bare loop: (\d+) images in ([\d.]+)s .* = ([\d.]+) images/s", cmd.output())
    if not found:
        raise BenchError("bare_loop.py printed no rate" + tail(cmd.log))
    run.images, run.seconds = int(found[1]), float(found[2])
    run.rate = run.images / run.seconds
    run.usage = [cmd.usage("bare_loop.py")]
    run.others = window.others(run.usage[0].cpu_s)
    run.note = (f"{run.images} images in {run.seconds:.1f} s of loop; its CPU includes start-up "
                f"(imports, model load, reading the photos) over {cmd.seconds:.1f} s in all")
    return run


class Bench:
    """The private stack and what runs on it."""

    def __init__(self, tmp: Path, log: Callable[[str], None]):
        # `maskflow up`'s layout and worker settings (make_config shortens the heartbeat and
        # lease for tests and leaves out the heavy pool; put the defaults back).
        self.cfg = make_config(tmp / "stack", worker={"heartbeat": WorkerConfig.heartbeat,
                                                      "lease": WorkerConfig.lease, "models": ()},
                               stack={"heavy_workers": StackConfig.heavy_workers})
        self.stack = Stack(self.cfg, log=lambda _msg: None)
        self.tmp, self.log = tmp, log
        self.mc = [str(install.resolve_binary(install.MC, self.cfg.stack.mc_bin)),
                   "--config-dir", str(tmp / "mc"), "--no-color"]

    def up(self) -> None:
        self.stack.up(app=True)
        m = self.cfg.minio
        subprocess.run([*self.mc, "alias", "set", "bench", f"http://{m.endpoint}", m.access_key,
                        m.secret_key], check=True, capture_output=True)
        self.r = self.stack.redis_client()
        self.tasks = TaskStore(self.r, self.cfg)

    def groups(self, *, app: bool = True) -> list[ServiceGroup]:
        pools = self.stack.pools()
        workers = [self.stack.running(name) for name, _ in pools if not name.startswith("worker-heavy")]
        heavy = [self.stack.running(name) for name, _ in pools if name.startswith("worker-heavy")]
        out = [ServiceGroup("MinIO", [self.stack.running("minio")]),
               ServiceGroup("Redis", [self.stack.running("redis")])]
        if app:
            out[:0] = [ServiceGroup("workers", workers)] + ([ServiceGroup("heavy pool", heavy)] if heavy else [])
            out.append(ServiceGroup("API", [self.stack.running("api")]))
            if dispatcher := self.stack.running("webhooks"):  # idle without callbacks
                out.append(ServiceGroup("webhooks", [dispatcher]))
        return out

    def masks(self, batch: str, count: int) -> dict[str, bytes]:
        """The masks of a drained batch, by photo name."""
        s3 = minio_client(self.cfg)
        out = {}
        for obj in s3.list_objects(self.cfg.minio.bucket, f"masks/{batch}/", recursive=True):
            response = s3.get_object(self.cfg.minio.bucket, obj.object_name)
            try:
                out[obj.object_name.rsplit("/", 1)[1].removesuffix(".png")] = response.read()
            finally:
                response.close()
                response.release_conn()
        if len(out) != count:
            raise BenchError(f"{len(out)} masks of {count} in masks/{batch}/")
        return out

    def drain(self, key: str, label: str, photos: Path, count: int, commands: list[str],
              model: str = "") -> Run:
        run = Run(key, label, images=count)
        batch = run.batch = f"{key}-{uuid.uuid4().hex[:6]}"
        prefix = f"input/{batch}/"
        argv = [*self.mc, "mirror", "--quiet", *(["--attr", f"X-Amz-Meta-Model={model}"] if model else []),
                str(photos), f"bench/{self.cfg.minio.bucket}/{prefix}"]
        commands.append(shlex.join([Path(argv[0]).name, *argv[1:]]))
        groups = self.groups()
        for group in groups:
            group.begin()
        window = Window()
        started = time.perf_counter()
        mc = Command(argv, self.tmp / f"mc-{batch}.log")

        def all_done() -> bool:
            summary = self.tasks.batch(prefix)
            return summary is not None and summary.done >= count

        def mc_ok() -> None:
            if mc.finished and mc.returncode:
                raise BenchError(f"mc mirror exited with {mc.returncode}" + tail(mc.log))

        poll_until(all_done, f"{count} tasks of {prefix} done", 120 + count * (3 if model else 1),
                   mc_ok)
        run.seconds = time.perf_counter() - started
        run.rate = count / run.seconds
        mc.wait(60)
        mc_ok()
        # Until MinIO's durable target has replayed its copy of every event and the workers
        # have dropped those twins: that CPU belongs to the drain too.
        poll_until(lambda: pipeline_idle(self.stack, self.r), "pipeline idle after the drain", 60)
        run.usage = [g.end() for g in groups] + [mc.usage("mc")]
        run.others = window.others(sum(u.cpu_s for u in run.usage))
        summary = self.tasks.batch(prefix)
        if summary.counts.get("completed", 0) != count:
            first = summary.failures[0].error if summary.failures else "?"
            raise BenchError(f"{summary.counts} of {count}; first failure: {first}")
        s3 = minio_client(self.cfg)
        stored = {kind: sum(1 for _ in s3.list_objects(self.cfg.minio.bucket, f"{kind}/{batch}/",
                                                      recursive=True))
                  for kind in ("output", "masks")}
        if set(stored.values()) != {count}:
            raise BenchError(f"results stored: {stored}, expected {count} of each")
        hwm = "" if all(g.hwm_reset for g in groups) else "; peak RSS since start (clear_refs refused)"
        run.note = (f"{count} completed, mc mirror upload took {mc.seconds:.1f} s; "
                    f"CPU until the pipeline was idle{hwm}")
        return run

    def celery(self, photos: Path, count: int, commands: list[str]) -> Run:
        run = Run("celery", "Celery worker, 2 prefork processes (`celery_peer.py`)", images=count)
        dists = ["onnxruntime", "opencv-python-headless", "numpy", "minio"]
        packages = ["celery[redis]", *(f"{d}=={importlib.metadata.version(d)}" for d in dists)]
        python = scratch_venv("celery-venv", packages, self.log)
        versions = venv_versions(python, ["celery", "kombu", "redis", *dists])
        c = self.cfg
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "S3_ENDPOINT": c.minio.endpoint,
               "S3_ACCESS": c.minio.access_key, "S3_SECRET": c.minio.secret_key,
               # Redis' admin user (the stack's Redis has no default user)
               "REDIS_URL": f"redis://admin:{self.stack.credentials.redis_password('admin')}@"
                            f"{c.redis.host}:{c.redis.port}/5",
               "MODEL": str(PERSON_MODEL), "PYTHONPATH": str(PEERS)}
        shown = {**env, "REDIS_URL": f"redis://admin:***@{c.redis.host}:{c.redis.port}/5"}
        shown_env = " ".join(f"{k}={shown[k]}" for k in ("S3_ENDPOINT", "REDIS_URL", "MODEL"))
        node = f"peer-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
        celery = [str(python), "-m", "celery", "-A", "celery_peer"]
        worker_argv = [*celery, "worker", "-c", "2", "--prefetch-multiplier", "1", "-P", "prefork",
                       "-l", "warning", "-n", node, "--without-gossip", "--without-mingle"]
        commands.append(f"{shown_env} {shlex.join(worker_argv)}")
        log = self.tmp / "celery-worker.log"
        worker = Command(worker_argv, log, env=env, cwd=PEERS)
        try:
            def ping() -> bool:
                done = subprocess.run([*celery, "inspect", "ping", "-d", node, "-t", "1"], env=env,
                                      cwd=PEERS, capture_output=True)
                return done.returncode == 0

            def worker_alive() -> None:
                if worker.finished:
                    raise BenchError(f"celery worker exited with {worker.returncode}" + tail(log))

            poll_until(ping, "celery worker answering ping", 180, worker_alive)
            groups = [ServiceGroup("celery worker", [worker.proc.pid]), *self.groups(app=False)]
            idle = [g for g in self.groups() if g.name in ("workers", "API")]  # maskflow, idle
            for group in groups + idle:
                group.begin()
            window = Window()
            drive_argv = [str(python), str(PEERS / "celery_peer.py"), "drive", str(photos), str(count)]
            commands.append(f"{shown_env} {shlex.join(drive_argv)}")
            driver = Command(drive_argv, self.tmp / "celery-drive.log", env=env, cwd=PEERS)
            if driver.wait(600 + 2 * count):
                raise BenchError(f"celery_peer.py drive exited with {driver.returncode}"
                                 + tail(driver.log))
            run.usage = [g.end() for g in groups] + [driver.usage("driver")]
            run.others = window.others(sum(u.cpu_s for u in run.usage)
                                       + sum(g.end().cpu_s for g in idle))
        finally:
            if not worker.finished:
                worker.proc.send_signal(signal.SIGTERM)  # warm shutdown
                with contextlib.suppress(BenchError):
                    worker.wait(30)
        found = re.search(r"celery peer: (\d+) images drained in ([\d.]+)s = ([\d.]+) images/s",
                          driver.output())
        if not found:
            raise BenchError("celery_peer.py printed no rate" + tail(driver.log))
        run.seconds = float(found[2])
        run.rate = count / run.seconds
        run.note = (f"{versions}; its drain is timed after its own pre-upload, its CPU covers "
                    f"the whole `drive` (upload included)")
        return run


def run_rembg(photos: Path, count: int, work: Path, commands: list[str],
              log: Callable[[str], None], model: str = "u2netp") -> Run:
    key, label = ("rembg", "rembg `p -m u2netp` (U²-Netp)") if model == "u2netp" else \
        (f"rembg-{model}", f"rembg `p -m {model}`")
    run = Run(key, label, images=count)
    python = scratch_venv("rembg-2.0.86-venv", [REMBG], log)
    versions = venv_versions(python, ["rembg", "onnxruntime", "pillow"])
    home = SCRATCH / "u2net"
    home.mkdir(parents=True, exist_ok=True)
    source, md5 = REMBG_MODELS[model]
    placed = home / f"{model}.onnx"
    if not placed.exists() or hashlib.md5(placed.read_bytes()).hexdigest() != md5:
        if hashlib.md5(source.read_bytes()).hexdigest() != md5:
            raise BenchError(f"{source} is not the file rembg expects (md5 {md5})")
        shutil.copyfile(source, placed)
    out = run.out = work / f"{key}-out"
    argv = [str(python.parent / "rembg"), "p", "-m", model, str(photos), str(out)]
    commands.append(f"U2NET_HOME={home} {shlex.join(argv)}")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    # Its first import compiles (numba, for pymatting) and caches in the venv: not timed.
    warm = subprocess.run([str(python), "-c", "import rembg.bg, rembg.cli"], capture_output=True,
                          text=True, env={**env, "U2NET_HOME": str(home)})
    if warm.returncode:
        raise BenchError(f"import rembg failed: {warm.stderr.strip().splitlines()[-1:]}")
    window = Window()
    cmd = Command(argv, work / "rembg.log", env={**env, "U2NET_HOME": str(home)})
    if cmd.wait(600 + 10 * count):
        raise BenchError(f"rembg exited with {cmd.returncode}" + tail(cmd.log))
    results = sorted(out.glob("*.png"), key=lambda p: p.stat().st_mtime)
    if len(results) != count:
        raise BenchError(f"rembg wrote {len(results)} of {count} cut-outs" + tail(cmd.log))
    run.seconds = cmd.seconds
    run.rate = count / run.seconds
    first, last = results[0].stat().st_mtime, results[-1].stat().st_mtime
    steady = (count - 1) / (last - first) if count > 1 and last > first else 0.0
    run.usage = [cmd.usage("rembg")]
    run.others = window.others(run.usage[0].cpu_s)
    run.note = (f"{versions}; whole command timed (start-up and model load included: "
                f"{first - (time.time() - (time.perf_counter() - cmd.started)):.1f} s to its first "
                f"cut-out); first -> last cut-out {steady:.2f} images/s")
    run.steady = steady
    return run


def mask_agreement(rembg: Run, ours: dict[str, bytes]) -> str:
    """rembg's cut-outs' alpha (its mask) beside maskflow's masks, photo by photo."""
    ious, diffs = [], []
    for cutout in sorted(rembg.out.glob("*.png")):
        theirs = png(cutout.read_bytes())[:, :, 3].astype(float) / 255
        mine = png(ours[f"{cutout.stem}.jpg"]).astype(float) / 255
        ious.append(iou(mine, theirs))
        diffs.append(float(abs(mine - theirs).mean()))
    return (f"masks against rembg's on these {len(ious)} photos: IoU@0.5 min {min(ious):.5f}, "
            f"mean |diff| max {max(diffs):.5f}")


# -- photos and the table --------------------------------------------------------------------------

# --mix: widths from 256 to 2,400 px; a third PNG, a quarter of the JPEGs stored sideways with
# EXIF orientation 6 (as a phone held upright writes them).
MIX_SIZES = "256x192,640x480,1024x768,1600x1200,2400x1800"


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'WxH' or 'WxH,WxH,...' as (width, height) pairs."""
    return [tuple(int(v) for v in size.split("x")) for size in text.split(",")]


def write_photos(folder: Path, count: int, sizes: list[tuple[int, int]], mix: bool = False) -> int:
    folder.mkdir(parents=True)
    total = 0
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        if mix and i % 3 == 2:
            name, data = f"img-{i:05d}.png", make_photo(i, width, height, ext=".png")
        elif mix and i % 4 == 1:  # upright width x height, stored rotated 90° clockwise
            sideways = make_photo(i, height, width, quality=90)
            name, data = f"img-{i:05d}.jpg", jpeg_with_orientation(sideways, 6)
        else:
            name, data = f"img-{i:05d}.jpg", make_photo(i, width, height, quality=90)
        (folder / name).write_bytes(data)
        total += len(data)
    return total


def describe_photos(args: argparse.Namespace) -> str:
    if args.mix:
        return (f"{args.photos} photos of {args.size} in turn (a third PNG, a quarter of the JPEGs "
                f"with EXIF orientation 6; from tests/checks.py make_photo)")
    return f"{args.photos} photos of {args.size} (JPEG q90, from tests/checks.py make_photo)"


def cells(run: Run) -> tuple[str, str]:
    per = {}
    for u in run.usage:
        per[u.name] = per.get(u.name, 0.0) + u.cpu_s
    cpu = " · ".join(f"{name} {1000 * s / run.images:.1f}" for name, s in per.items())
    rss = " · ".join(f"{u.name} {u.rss_mb:.0f}" + (f" ({u.procs} proc)" if u.procs > 1 else "")
                     for u in run.usage)
    return f"{cpu} = **{run.cpu_ms():.1f}**", rss


def table(runs: dict[str, Run]) -> list[str]:
    lines = ["| what | images | s | images/s | maskflow ÷ it | CPU ms/image by process | peak RSS MB "
             "| others' load (cores) |",
             "|---|---|---|---|---|---|---|---|"]
    person, general, u2net = runs.get("maskflow"), runs.get("maskflow-general"), runs.get("maskflow-u2net")
    for key in ("bare", "celery", "maskflow", "rembg", "maskflow-general", "rembg-u2net", "maskflow-u2net"):
        run = runs.get(key)
        if run is None:
            continue
        if run.error:
            error = run.error.splitlines()[0].replace("|", "/")
            lines.append(f"| {run.label} | — | — | — | — | failed: {error} | — | — |")
            continue
        against = {"rembg": general, "rembg-u2net": u2net, "bare": person, "celery": person}.get(key)
        ratio = "—"
        if against is not None and not against.error and run.rate:
            ratio = f"{against.rate / run.rate:.2f}"
            if run.steady:
                ratio += f" ({against.rate / run.steady:.2f} vs its first→last rate)"
        rate = f"{run.rate:.1f}" if run.rate >= 10 else f"{run.rate:.2f}"
        cpu, rss = cells(run)
        lines.append(f"| {run.label} | {run.images} | {run.seconds:.1f} | {rate} | {ratio} | {cpu} | {rss} | {run.others:.2f} |")
    return lines


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    load = os.getloadavg()[0]
    return f"{os.cpu_count()} cores ({model}), load {load:.2f} at start, maskflow {commit}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=800, help="photos for the bare loop, maskflow and Celery")
    ap.add_argument("--u2netp-photos", type=int, default=40, help="the first M of them for rembg vs maskflow general")
    ap.add_argument("--u2net-photos", type=int, default=40, help="the first K of them for rembg vs maskflow u2net")
    ap.add_argument("--seconds", type=float, default=20, help="how long the bare loop runs")
    ap.add_argument("--size", default="1024x768",
                    help="WxH, or a comma-separated mix used in turn (e.g. 1024x768,768x1024,1600x1200)")
    ap.add_argument("--mix", action="store_true",
                    help=f"JPEG and PNG, some with EXIF rotation, of --size {MIX_SIZES} unless given")
    ap.add_argument("--skip", default="", help=f"comma-separated, of {','.join(CONTESTANTS)}")
    ap.add_argument("--wait-quiet", type=float, default=180, metavar="S",
                    help="before each run, wait up to S s until other users' processes take "
                         "< 0.15 cores (0: don't wait); the table shows the load there was")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, photos)")
    args = ap.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - set(CONTESTANTS):
        ap.error(f"--skip: unknown {','.join(sorted(skip - set(CONTESTANTS)))}; valid: {','.join(CONTESTANTS)}")
    if args.mix and args.size == ap.get_default("size"):
        args.size = MIX_SIZES
    sizes = parse_sizes(args.size)
    m = min(args.u2netp_photos, args.photos)
    k = min(args.u2net_photos, args.photos)
    python = os.path.relpath(sys.executable, Path.cwd()) if Path(sys.executable).is_relative_to(ROOT) \
        else sys.executable
    command = shlex.join([python, *sys.argv])

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    # SIGTERM unwinds like Ctrl-C: the finally blocks stop the stack and every command.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="maskflow-compare-"))
    header = machine()
    runs: dict[str, Run] = {}
    commands: list[str] = []
    u2net_masks: dict[str, bytes] = {}

    stack_roots: Callable[[], list[int]] = list

    def attempt(key: str, label: str, fn: Callable[[], Run]) -> None:
        wait_quiet(0.15, args.wait_quiet, stack_roots, log)
        log(f"{label} ...")
        try:
            runs[key] = fn()
            log(f"{label}: {runs[key].rate:.2f} images/s")
        except Exception as exc:  # noqa: BLE001 - one contestant failing still prints the others
            runs[key] = Run(key, label, error=f"{type(exc).__name__}: {exc}")
            log(f"{label} FAILED: {exc}")

    try:
        photos, few, some = tmp / "photos", tmp / "photos-u2netp", tmp / "photos-u2net"
        size = write_photos(photos, args.photos, sizes, args.mix)
        for folder, first in ((few, m), (some, k)):
            folder.mkdir()
            for path in sorted(photos.iterdir())[:first]:
                shutil.copyfile(path, folder / path.name)
        log(f"{describe_photos(args)}, {size / args.photos / 1024:.0f} KB each on average, in {photos}")
        if "bare" not in skip:
            attempt("bare", "naive loop, 2 processes (`bare_loop.py`)",
                    lambda: run_bare(photos, args.seconds, tmp, commands))
        if not {"maskflow", "celery", "rembg", "u2net"} <= skip:
            bench = Bench(tmp, log)
            log("starting the private stack ...")
            bench.up()
            stack_roots = lambda: [pid for name in bench.stack.services()  # noqa: E731
                                   if (pid := bench.stack.running(name))]
            try:
                workers = f"{bench.cfg.stack.workers} worker × {bench.cfg.worker.concurrency} threads"
                if "maskflow" not in skip:
                    attempt("maskflow", f"maskflow, `mc mirror` drain ({workers}, `person`)",
                            lambda: bench.drain("maskflow", f"maskflow, `mc mirror` drain ({workers}, `person`)",
                                                photos, args.photos, commands))
                if "celery" not in skip:
                    attempt("celery", "Celery worker, 2 prefork processes (`celery_peer.py`)",
                            lambda: bench.celery(photos, args.photos, commands))
                if "rembg" not in skip:
                    label = f"maskflow, `mc mirror` drain ({workers}, `general` = U²-Netp)"
                    attempt("maskflow-general", label,
                            lambda: bench.drain("maskflow-general", label, few, m, commands, GENERAL))
                if "u2net" not in skip:
                    label = "maskflow, `mc mirror` drain (`u2net` on its pool: 1 worker, a run per core)"
                    attempt("maskflow-u2net", label,
                            lambda: bench.drain("maskflow-u2net", label, some, k, commands, "u2net"))
                    if not runs["maskflow-u2net"].error:
                        u2net_masks = bench.masks(runs["maskflow-u2net"].batch, k)
            finally:
                log("stopping the private stack ...")
                bench.stack.down()
                stack_roots = list
        if "rembg" not in skip:
            attempt("rembg", "rembg `p -m u2netp` (U²-Netp)", lambda: run_rembg(few, m, tmp, commands, log))
        if "u2net" not in skip:
            attempt("rembg-u2net", "rembg `p -m u2net`",
                    lambda: run_rembg(some, k, tmp, commands, log, "u2net"))
            if u2net_masks and not runs["rembg-u2net"].error:
                runs["maskflow-u2net"].note += "; " + mask_agreement(runs["rembg-u2net"], u2net_masks)
    finally:
        for cmd in list(Command.live):
            cmd.kill()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"`{command}`")
    print()
    few_note = f"{m} of them for U²-Netp; " if "rembg" not in skip else ""
    print(f"{header}; {describe_photos(args)}, {few_note}{time.strftime('%Y-%m-%d')}")
    print()
    print("\n".join(table(runs)))
    print()
    print("Notes:")
    for run in runs.values():
        if run.note:
            print(f"- {run.label}: {run.note}")
    print("- CPU: utime+stime from /proc over each service's process tree during the run; "
          "commands (mc, bare_loop.py, driver, rembg) by wait4() rusage, reaped children included. "
          "Peak RSS: VmHWM summed over a group's processes. Others' load: machine busy time "
          "(/proc/stat) minus this benchmark's processes, per second of the run; above ~0.1 the "
          "machine was shared and the figures are not clean.")
    print()
    print("Commands:")
    for line in commands:
        print(f"    {line}")
    return 1 if any(run.error for run in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
