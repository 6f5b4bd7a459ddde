"""Using the API one task at a time: `maskflow submit` and `maskflow status`.

Results are named <stem>.png (cut-out) and <stem>.mask.png (mask).
"""
from __future__ import annotations

import json
from pathlib import Path

from maskflow.infra.sdk.cli.exits import EXIT_FAILED, EXIT_OK, UsageError
from maskflow.infra.ops.console import say
from maskflow.infra.sdk.client import Client, ClientError, TaskFailed
from maskflow.infra.wiring.config import Config

FAILURES_PAGE = 1000  # failures fetched per request beyond the first page of `status --batch`


def api_client(args, cfg: Config) -> Client:
    """The API named by --api-url and --token, else by the config."""
    token = args.token if args.token is not None else (cfg.api.token or None)
    return Client(args.api_url or _config_api_url(cfg), token=token)


def _config_api_url(cfg: Config) -> str:
    host = cfg.api.host
    if host in ("", "0.0.0.0", "::", "[::]"):  # a bind-all address is not something to call
        host = "127.0.0.1"
    return f"http://{host}:{cfg.api.port}"


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
def submit(args, cfg: Config) -> int:
    paths = [Path(p) for p in args.images]
    for path in paths:
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
    client = api_client(args, cfg)
    failed: list[tuple[Path, str]] = []
    submitted: list[tuple[Path, str, str]] = []
    for path, stem in zip(paths, unique_stems(paths)):
        try:
            send = client.submit_presigned if args.presigned else client.submit
            task_id = send(path, model=args.model)
        except ClientError as exc:
            if not exc.rejected:
                raise
            failed.append((path, f"rejected: {exc}"))
            continue
        print(f"{task_id}  {path}", flush=True)
        submitted.append((path, stem, task_id))
    if args.wait or args.out is not None:
        failed += _wait_for_results(client, submitted, args.out, cfg)
    for path, reason in failed:
        say(f"FAILED {path}: {reason}")
    return EXIT_FAILED if failed else EXIT_OK


def _wait_for_results(client: Client, submitted: list[tuple[Path, str, str]], out: str | None,
                      cfg: Config) -> list[tuple[Path, str]]:
    """Wait for each task in turn, downloading its results into `out` if given; the failures."""
    failed = []
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
        if out is not None:
            cutout, mask = client.download(task, out, stem)
            print(f"{cutout}  {mask}", flush=True)
    return failed


# -- status ---------------------------------------------------------------------------------------
def status(args, cfg: Config) -> int:
    client = api_client(args, cfg)
    given = [x for x in (args.task_id, args.key, args.batch) if x]
    if len(given) != 1:
        raise UsageError("status: give exactly one of TASK_ID, --key input/... or --batch input/<name>/")
    if args.task_id:
        return _print_task(client.get(args.task_id), args.json)
    if args.key:
        task = client.find(args.key)
        if task is None:
            raise UsageError(f"no task for object key {args.key!r} (not uploaded, or not picked up yet)")
        return _print_task(task, args.json)
    return _print_batch(client, _batch_prefix(args.batch), args.json)


def _print_task(task: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(task, indent=2))
    else:
        result = task.get("result") or {}
        rows = [("task_id", task.get("task_id")), ("status", task.get("status")),
                ("model", task.get("model")),  # only tasks that named one show it
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


def _print_batch(client: Client, prefix: str, as_json: bool) -> int:
    first = client.batch(prefix)
    if first is None:
        raise UsageError(f"no tasks under {prefix} (nothing uploaded there yet?)")
    failures = _all_failures(client, prefix, first)
    if as_json:
        print(json.dumps({**first, "failures": failures}, indent=2))
    else:
        counts = first.get("counts", {})
        print(f"{prefix}: {first['done']}/{first['total']} done  "
              + "  ".join(f"{s} {counts.get(s, 0)}" for s in
                          ("completed", "failed", "processing", "pending")))
        for f in failures:
            print(f"FAILED {f.get('key')}: {f.get('error')}")
    return EXIT_FAILED if failures else EXIT_OK


def _all_failures(client: Client, prefix: str, first: dict) -> list[dict]:
    """The first page's failures, then the rest page by page."""
    failures = list(first.get("failures", []))
    while len(failures) < first.get("failures_total", 0):
        page = client.batch(prefix, offset=len(failures), limit=FAILURES_PAGE)
        if not page or not page.get("failures"):
            break
        failures.extend(page["failures"])
    return failures
