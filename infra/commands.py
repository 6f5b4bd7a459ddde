"""The user-side commands: `maskflow submit`, `maskflow status`, `maskflow batch`.

Exit codes: 0 all completed, 1 some failed (each listed with its reason), 2 usage,
configuration or connection errors (one line, no traceback; Ctrl-C also exits 2).
Results are named <stem>.png (cut-out) and <stem>.mask.png (mask).
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from infra.client import Client, ClientError, TaskFailed, atomic_write, result_paths
from infra.config import Config, load_config

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
STATE_FILE = ".maskflow-batch.json"


def say(message: str) -> None:
    print(f"maskflow: {message}", file=sys.stderr, flush=True)


class Usage(Exception):
    """A usage or connection problem: one line, exit 2."""


# -- shared set-up ------------------------------------------------------------------------------
def _api_url(cfg: Config) -> str:
    host = cfg.api.host
    if host in ("", "0.0.0.0", "::", "[::]"):  # a bind-all address is not something to call
        host = "127.0.0.1"
    return f"http://{host}:{cfg.api.port}"


def _client(args, cfg: Config) -> Client:
    token = args.token if args.token is not None else (cfg.api.token or None)
    return Client(args.api_url or _api_url(cfg), token=token)


def _run(handler):
    """Map expected errors to one line and an exit code."""
    def run(args) -> int:
        try:
            return handler(args, load_config(args.config))
        except (ClientError, Usage) as exc:
            say(str(exc))
            return EXIT_USAGE
    return run


class Progress:
    """A one-line progress bar on stderr (plain periodic lines when stderr is not a terminal)."""

    def __init__(self, label: str, total: int, every: float = 2.0):
        self.label, self.total = label, total
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.every = 0.1 if self.tty else every
        self.last_draw = 0.0
        self.done = self.failed = 0
        self.base = 0  # items already settled when the bar started: not part of the rate
        self.drawn: tuple[int, int] | None = None

    def update(self, done: int, failed: int = 0, force: bool = False) -> None:
        self.done, self.failed = done, failed
        now = time.monotonic()
        if self.drawn == (done, failed) or (not force and now - self.last_draw < self.every
                                            and done < self.total):
            return
        self.last_draw, self.drawn = now, (done, failed)
        elapsed = max(now - self.start, 1e-3)
        rate = (done - self.base) / elapsed
        eta = f"{(self.total - done) / rate:.0f}s" if 0 < rate and done < self.total else "-"
        width = 24
        fill = int(width * done / self.total) if self.total else width
        bar = "#" * fill + "." * (width - fill)
        line = (f"{self.label:<10} [{bar}] {done}/{self.total}"
                + (f" failed {failed}" if failed else "") + f"  {rate:.1f}/s  ETA {eta}")
        if self.tty:
            sys.stderr.write("\r" + line + "\x1b[K")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        self.update(self.done, self.failed, force=True)
        if self.tty and self.drawn is not None:
            sys.stderr.write("\n")
            sys.stderr.flush()


def unique_stems(paths: list[Path]) -> list[str]:
    """photo.jpg -> photo; when two inputs share a stem, keep their whole names (photo.jpg)."""
    stems = [p.stem for p in paths]
    names = [p.name if stems.count(p.stem) > 1 else p.stem for p in paths]
    seen: dict[str, int] = {}
    out = []
    for name in names:  # the same file name twice on the command line (a/x.jpg b/x.jpg)
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


# -- submit ---------------------------------------------------------------------------------------
def cmd_submit(args, cfg: Config) -> int:
    paths = [Path(p) for p in args.images]
    for p in paths:
        if not p.is_file():
            raise Usage(f"{p}: no such file")
    client = _client(args, cfg)
    wait = args.wait or args.out is not None
    stems = unique_stems(paths)
    failed: list[tuple[Path, str]] = []
    submitted: list[tuple[Path, str, str]] = []
    for path, stem in zip(paths, stems):
        try:
            task_id = client.submit_presigned(path) if args.presigned else client.submit(path)
        except ClientError as exc:
            if not exc.rejected:
                raise
            failed.append((path, f"rejected: {exc}"))
            continue
        print(f"{task_id}  {path}", flush=True)
        submitted.append((path, stem, task_id))
    if wait:
        for path, stem, task_id in submitted:
            try:
                task = client.wait(task_id, poll_interval=cfg.task.poll_interval,
                                   max_polls=cfg.task.max_polls,
                                   on_status=lambda t, p=path: say(f"{p}: {t['status']}"))
            except TaskFailed as exc:
                failed.append((path, exc.error))
                continue
            except TimeoutError as exc:
                failed.append((path, str(exc)))
                continue
            if args.out is not None:
                cutout, mask = client.download(task, args.out, stem)
                print(f"{cutout}  {mask}", flush=True)
    for path, reason in failed:
        say(f"FAILED {path}: {reason}")
    return EXIT_FAILED if failed else EXIT_OK


# -- status ---------------------------------------------------------------------------------------
def _print_task(task: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(task, indent=2))
    else:
        result = task.get("result") or {}
        rows = [("task_id", task.get("task_id")), ("status", task.get("status")),
                ("created_at", task.get("created_at")), ("completed_at", task.get("completed_at")),
                ("cut-out", result.get("segmented_image_url")), ("mask", result.get("mask_image_url")),
                ("error", task.get("error"))]
        for name, value in rows:
            if value:
                print(f"{name:<13}{value}")
    return EXIT_FAILED if task.get("status") == "failed" else EXIT_OK


def _batch_prefix(text: str) -> str:
    text = text.strip("/")
    return (text if text.startswith("input/") else f"input/{text}") + "/"


def cmd_status(args, cfg: Config) -> int:
    client = _client(args, cfg)
    given = [x for x in (args.task_id, args.key, args.batch) if x]
    if len(given) != 1:
        raise Usage("status: give exactly one of TASK_ID, --key input/... or --batch input/<name>/")
    if args.task_id:
        return _print_task(client.get(args.task_id), args.json)
    if args.key:
        task = client.find(args.key)
        if task is None:
            raise Usage(f"no task for object key {args.key!r} (not uploaded, or not picked up yet)")
        return _print_task(task, args.json)
    prefix = _batch_prefix(args.batch)
    first = client.batch(prefix)
    if first is None:
        raise Usage(f"no tasks under {prefix} (nothing uploaded there yet?)")
    failures = list(first.get("failures", []))
    while len(failures) < first.get("failures_total", 0):
        page = client.batch(prefix, offset=len(failures), limit=1000)
        if not page or not page.get("failures"):
            break
        failures.extend(page["failures"])
    if args.json:
        print(json.dumps({**first, "failures": failures}, indent=2))
    else:
        counts = first.get("counts", {})
        print(f"{prefix}: {first['done']}/{first['total']} done  "
              + "  ".join(f"{s} {counts.get(s, 0)}" for s in
                          ("completed", "failed", "processing", "pending")))
        for f in failures:
            print(f"FAILED {f.get('key')}: {f.get('error')}")
    return EXIT_FAILED if failures else EXIT_OK


# -- batch ----------------------------------------------------------------------------------------
@dataclass
class Item:
    rel: str  # posix path below DIR
    path: Path
    stem: str  # result name below --out, without .png / .mask.png
    key: str = ""
    task_id: str | None = None
    fresh_after: str | None = None  # overwrote an older object: ignore results older than this
    task: dict | None = None
    error: str | None = None


def scan(root: Path) -> tuple[list[str], int]:
    """Image files under root (posix relative paths, sorted) and the number of others skipped."""
    images, skipped = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            rel = Path(dirpath, name).relative_to(root).as_posix()
            if Path(name).suffix.lower() in IMAGE_EXTS:
                images.append(rel)
            else:
                skipped += 1
    return sorted(images), skipped


def _stems(rels: list[str]) -> dict[str, str]:
    """Per folder, <stem> unless two images share it (a.jpg, a.png), then the whole name."""
    by_dir: dict[str, list[str]] = {}
    for rel in rels:
        by_dir.setdefault(str(PurePosixPath(rel).parent), []).append(rel)
    out = {}
    for rels_in_dir in by_dir.values():
        paths = [Path(r) for r in rels_in_dir]
        for rel, stem in zip(rels_in_dir, unique_stems([Path(p.name) for p in paths])):
            parent = PurePosixPath(rel).parent
            out[rel] = str(parent / stem) if str(parent) != "." else stem
    return out


def _done_locally(out: Path | None, stem: str) -> bool:
    if out is None:
        return False
    return all(p.is_file() for p in result_paths(out, stem))


def _md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _upload_s3(items: list[Item], cfg: Config, prefix: str) -> None:
    """Put each file at input/<name>/<rel> like `mc mirror`: identical objects are skipped."""
    from minio.error import S3Error

    from infra.objects import ObjectStore
    store = ObjectStore(cfg)
    bar = Progress("upload", len(items))
    try:
        for n, item in enumerate(items, 1):
            item.key = f"input/{prefix}/{item.rel}"
            try:
                try:
                    stat = store.client.stat_object(store.bucket, item.key)
                except S3Error as exc:
                    if exc.code not in ("NoSuchKey", "NoSuchObject"):
                        raise
                    stat = None
                if stat is not None and (stat.etag or "").strip('"') == _md5(item.path):
                    bar.update(n)
                    continue
                if stat is not None:
                    item.fresh_after = _now_iso()
                ctype = _content_type(item.path)
                store.client.fput_object(store.bucket, item.key, str(item.path), content_type=ctype)
            except S3Error as exc:
                raise Usage(f"MinIO at {cfg.minio.endpoint} refused {item.key}: {exc.code}") from None
            except OSError as exc:  # urllib3 connection errors are OSErrors too
                raise Usage(f"cannot reach MinIO at {cfg.minio.endpoint} "
                            f"({type(exc).__name__}): is it running?") from None
            bar.update(n)
    finally:
        bar.close()


def _content_type(path: Path) -> str:
    from infra.client import sniff_content_type
    with open(path, "rb") as f:
        head = f.read(64)
    return sniff_content_type(head, path.name) or "application/octet-stream"


def _upload_api(items: list[Item], client: Client, state_path: Path) -> None:
    """Submit each file through the API; task ids are kept in a state file so a re-run resumes."""
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        state = {}
    if state.get("api_url") != client.api_url:
        state = {"api_url": client.api_url, "tasks": {}}
    tasks = state["tasks"]
    bar = Progress("upload", len(items))
    try:
        for n, item in enumerate(items, 1):
            st = item.path.stat()
            sig = f"{st.st_size}:{st.st_mtime_ns}"
            known = tasks.get(item.rel)
            if known and known.get("sig") == sig:
                item.task_id = known["task_id"]
            else:
                try:
                    item.task_id = client.submit(item.path)
                except ClientError as exc:
                    if not exc.rejected:
                        raise
                    item.error = f"rejected: {exc}"
                else:
                    tasks[item.rel] = {"task_id": item.task_id, "sig": sig}
                    atomic_write(state_path, [json.dumps(state).encode()])
            bar.update(n)
    finally:
        bar.close()


def _poll(items: list[Item], client: Client, out: Path | None, cfg: Config, via: str) -> None:
    """Poll every unfinished item each round, downloading results as they complete."""
    pending = [i for i in items if i.error is None]
    failed = [i for i in items if i.error is not None]
    done = len(failed)
    bar = Progress("processing", len(items))
    bar.base = done  # files the API rejected at upload are settled, not processed
    bar.update(done, len(failed), force=True)
    # Give up once nothing has finished for the whole polling budget (150 x 2 s by default).
    stall = cfg.task.max_polls * cfg.task.poll_interval
    last_change = time.monotonic()
    try:
        while pending:
            started = time.monotonic()
            still = []
            for item in pending:
                task = client.get(item.task_id) if via == "api" else client.find(item.key)
                status = task.get("status") if task else None
                if status in ("completed", "failed") and item.fresh_after and \
                        (task.get("completed_at") or "") < item.fresh_after:
                    status = None  # the previous upload's result; ours is still coming
                if status == "completed":
                    if out is not None:
                        client.download(task, out, item.stem)
                    item.task = task
                elif status == "failed":
                    item.task, item.error = task, task.get("error") or "failed"
                    failed.append(item)
                else:
                    still.append(item)
                    continue
                done += 1
                last_change = time.monotonic()
                bar.update(done, len(failed))
            pending = still
            if pending:
                if time.monotonic() - last_change > stall:
                    for item in pending:
                        item.error = f"not finished after {stall} s without progress"
                        failed.append(item)
                    break
                left = cfg.task.poll_interval - (time.monotonic() - started)
                if left > 0:
                    time.sleep(left)  # the polling interval itself
    finally:
        bar.close()


def cmd_batch(args, cfg: Config) -> int:
    root = Path(args.dir)
    if not root.is_dir():
        raise Usage(f"{root}: not a directory")
    prefix = (args.prefix or root.resolve().name).strip("/")
    if prefix.startswith("input/"):
        prefix = prefix[len("input/"):]
    if not prefix:
        raise Usage("batch: --prefix must name a folder, e.g. --prefix holiday")
    out = Path(args.out) if args.out else None
    rels, skipped = scan(root)
    if not rels:
        raise Usage(f"{root}: no image files ({', '.join(sorted(IMAGE_EXTS))})")
    stems = _stems(rels)
    items = [Item(rel, root / rel, stems[rel]) for rel in rels]
    todo = [i for i in items if not _done_locally(out, i.stem)]
    client = _client(args, cfg)
    _check_api(client)
    say(f"batch input/{prefix}/: {len(items)} images"
        + (f" ({skipped} other files ignored)" if skipped else "")
        + (f", {len(items) - len(todo)} already done in {out}, skipping them" if out else ""))
    if todo:
        if args.via == "s3":
            _upload_s3(todo, cfg, prefix)
        else:
            _upload_api(todo, client, (out or root) / STATE_FILE)
        _poll(todo, client, out, cfg, args.via)
    failures = [i for i in todo if i.error is not None]
    completed = len(items) - len(failures)
    say(f"batch input/{prefix}/: {completed} completed, {len(failures)} failed"
        + (f"; results in {out}" if out else ""))
    for item in failures:
        say(f"FAILED {item.rel}: {item.error}")
    return EXIT_FAILED if failures else EXIT_OK


def _check_api(client: Client) -> None:
    """Fail fast (exit 2) on a wrong URL or token, before uploading anything."""
    client.batch("input/")  # any authenticated read; 404 (no such batch) is fine


# -- wiring ---------------------------------------------------------------------------------------
def register(subparsers) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api-url", help="API base URL (default: http://<api.host>:<api.port> "
                                          "from the config)")
    common.add_argument("--token", help="bearer token (default: config api.token / "
                                        "MASKFLOW_API_TOKEN)")

    submit = subparsers.add_parser(
        "submit", parents=[common], help="upload images through the API (and wait for results)",
        description="Upload images through the API. With --wait, poll until each is done "
                    "(2 s polls, at most 150); with --out, also download <stem>.png (cut-out) "
                    "and <stem>.mask.png (mask) into DIR.")
    submit.add_argument("images", nargs="+", metavar="IMAGE")
    submit.add_argument("--wait", action="store_true", help="wait until each task is done")
    submit.add_argument("--out", metavar="DIR", help="download results into DIR (implies --wait)")
    submit.add_argument("--presigned", action="store_true",
                        help="upload straight to MinIO with a presigned POST from the API")
    submit.set_defaults(func=_run(cmd_submit))

    status = subparsers.add_parser(
        "status", parents=[common], help="show a task, the task of an object, or a batch",
        description="Show one task by id, the task of an uploaded object (--key input/...), "
                    "or counts and failures of a batch (--batch input/<name>/).")
    status.add_argument("task_id", nargs="?", metavar="TASK_ID")
    status.add_argument("--key", help="object key, e.g. input/holiday/beach.jpg")
    status.add_argument("--batch", help="batch folder, e.g. input/holiday/")
    status.add_argument("--json", action="store_true", help="print the API's JSON")
    status.set_defaults(func=_run(cmd_status))

    batch = subparsers.add_parser(
        "batch", parents=[common], help="upload a folder, show progress, mirror results",
        description="Upload every image under DIR to input/<NAME>/ (keeping subfolders), show "
                    "upload and processing progress, and mirror results into --out with the "
                    "same tree. A re-run skips files whose results are already in --out.")
    batch.add_argument("dir", metavar="DIR")
    batch.add_argument("--prefix", metavar="NAME", help="batch name: objects go to "
                                                        "input/NAME/... (default: DIR's name)")
    batch.add_argument("--out", metavar="DIR", help="write <stem>.png and <stem>.mask.png here, "
                                                    "mirroring DIR's tree")
    batch.add_argument("--via", choices=("s3", "api"), default="s3",
                       help="upload straight to MinIO with the config's credentials (s3, the "
                            "default, like mc mirror) or through the API (api)")
    batch.set_defaults(func=_run(cmd_batch))
