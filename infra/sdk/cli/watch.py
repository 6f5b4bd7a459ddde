"""`maskflow watch [PREFIX]`: follow the results stream live, one request for as long as it runs.

With a batch prefix: a progress bar of the batch (its counts come with every event) and a line
per failure with its reason; with --json, one line per event on stdout instead.  It runs until
interrupted, or with --until-done until the batch's tasks are all done (--expect N: until at
least N are).
"""
from __future__ import annotations

import json
import sys

from maskflow.infra.ops.console import say
from maskflow.infra.sdk.cli.connect import api_client
from maskflow.infra.sdk.cli.exits import EXIT_FAILED, EXIT_OK, UsageError
from maskflow.infra.sdk.cli.progress import Progress
from maskflow.infra.sdk.cli.status import batch_prefix
from maskflow.infra.wiring.config import Config


def watch(args, cfg: Config) -> int:
    prefix = batch_prefix(args.prefix) if args.prefix else ""
    if (args.until_done or args.expect) and not prefix:
        raise UsageError("watch: --until-done and --expect need a batch PREFIX")
    client = api_client(args, cfg)
    bar = Progress("processing", 0) if prefix and not args.json else None
    failed = 0
    try:
        for kind, data in client.follow(prefix, after=args.after):
            if kind == "idle" or data is None:
                continue
            if args.json:
                print(json.dumps({"event": kind, **data}), flush=True)
            if kind == "result" and data.get("status") == "failed":
                failed += 1
                if not args.json:
                    say(f"FAILED {data.get('input_key')}: {data.get('error')}")
            batch = data if kind == "batch" else data.get("batch")
            if batch is None:
                continue
            if bar is not None:
                bar.total = batch["total"]
                bar.update(batch["done"], batch["counts"].get("failed", 0))
            if _finished(batch, args):
                failed = max(failed, batch["counts"].get("failed", 0))
                break
    except KeyboardInterrupt:
        pass
    finally:
        if bar is not None:
            bar.close()
    return EXIT_FAILED if failed else EXIT_OK


def _finished(batch: dict, args) -> bool:
    if args.expect:
        return batch["done"] >= args.expect
    return bool(args.until_done and batch["total"] and batch["done"] >= batch["total"])


def add_parser(commands, api_options) -> None:
    parser = commands.add_parser(
        "watch", parents=[api_options], help="follow finished tasks live (the results stream)",
        description=sys.modules[__name__].__doc__.split("\n\n", 1)[1])
    parser.add_argument("prefix", nargs="?", metavar="PREFIX", help="batch folder, e.g. input/holiday/")
    parser.add_argument("--json", action="store_true", help="one JSON line per event on stdout")
    parser.add_argument("--until-done", action="store_true", help="exit once every task of the batch is done")
    parser.add_argument("--expect", type=int, metavar="N", help="exit once N tasks of the batch are done")
    parser.add_argument("--after", metavar="ID", help="replay from after this stream id (0: all kept)")
    parser.set_defaults(run=watch)
