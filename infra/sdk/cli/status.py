"""`maskflow status`: one task, the task of an object, or a batch's counts and failures."""
from __future__ import annotations

import json

from maskflow.infra.sdk.cli.connect import api_client
from maskflow.infra.sdk.cli.exits import EXIT_FAILED, EXIT_OK, UsageError
from maskflow.infra.sdk.client import Client
from maskflow.infra.wiring.config import Config

FAILURES_PAGE = 1000  # failures fetched per request beyond the first page of `status --batch`


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
    return _print_batch(client, batch_prefix(args.batch), args.json)


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


def batch_prefix(text: str) -> str:
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
