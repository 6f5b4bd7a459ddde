"""`maskflow submit`: upload images through the API, and with --wait or --out, wait for them.

Results are named after each input's stem (cli/names.py), one file per result kind.
"""
from __future__ import annotations

from pathlib import Path

from maskflow.infra.ops.console import say
from maskflow.infra.sdk.cli.connect import api_client
from maskflow.infra.sdk.cli.exits import EXIT_FAILED, EXIT_OK, UsageError
from maskflow.infra.sdk.cli.names import unique_stems
from maskflow.infra.sdk.cli.recipe import from_args
from maskflow.infra.sdk.client import Client, ClientError, TaskFailed
from maskflow.infra.wiring.config import Config


def submit(args, cfg: Config) -> int:
    paths = [Path(p) for p in args.images]
    for path in paths:
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
    client = api_client(args, cfg)
    asked = from_args(args)
    failed: list[tuple[Path, str]] = []
    submitted: list[tuple[Path, str, str]] = []
    for path, stem in zip(paths, unique_stems(paths)):
        try:
            send = client.submit_presigned if args.presigned else client.submit
            task_id = send(path, model=asked.model or None, options=asked.options)
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
            paths = client.download(task, out, stem)
            print("  ".join(str(p) for p in paths.values()), flush=True)
    return failed
