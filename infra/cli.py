"""`maskflow`: one entry point for running the stack and using it.

Exit codes: 0 success, 1 some tasks failed, 2 usage, configuration or connection errors.
Errors print one line, never a traceback.  `api` and `worker` replace this process with
``python -m api`` / ``python -m functions`` so infra never imports them.
"""
from __future__ import annotations

import argparse
import os
import sys

from infra import commands
from infra.config import ConfigError, load_config
from infra.install import InstallError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _fail(message: str) -> int:
    print(f"maskflow: {message}", file=sys.stderr)
    return EXIT_USAGE


def cmd_up(args) -> int:
    from infra.stack import Stack
    cfg = load_config(args.config)
    Stack(cfg).up(app=not args.servers_only)
    print(f"Redis   redis://{cfg.redis.host}:{cfg.redis.port}/{cfg.redis.db}  (events list {cfg.queue.events_key})")
    print(f"MinIO   http://{cfg.minio.endpoint}  bucket {cfg.minio.bucket}  (public {cfg.minio_public_endpoint})")
    if not args.servers_only:
        print(f"API     {cfg.api_url}  (web page {cfg.api_url}/, OpenAPI {cfg.api_url}/api/v1/openapi.json)")
        print(f"Workers {cfg.stack.workers}  (logs in {cfg.data_dir / 'logs'})")
    return EXIT_OK


def cmd_down(args) -> int:
    from infra.stack import Stack
    stopped = Stack(load_config(args.config)).down()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return EXIT_OK


def _exec_module(module: str, extra: list[str], config: str | None) -> int:
    load_config(config)  # fail here, in one line, on a bad setting
    if config:
        os.environ["MASKFLOW_CONFIG"] = config
    os.execv(sys.executable, [sys.executable, "-m", module, *extra])
    return EXIT_USAGE  # pragma: no cover - execv does not return


def cmd_api(args) -> int:
    return _exec_module("api", [], args.config)


def cmd_worker(args) -> int:
    extra = (["--id", args.id] if args.id else []) + (["--burst"] if args.burst else [])
    return _exec_module("functions", extra, args.config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskflow", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="TOML config file (default: $MASKFLOW_CONFIG); "
                                         "every key can also be set as MASKFLOW_<SECTION>_<KEY>")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="install what is missing, start Redis, MinIO, the API and "
                                   "workers in the background, and return once all are ready")
    up.add_argument("--servers-only", action="store_true", help="start only Redis and MinIO")
    up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop everything `up` started").set_defaults(func=cmd_down)
    sub.add_parser("api", help="serve the HTTP API in the foreground (waitress)").set_defaults(func=cmd_api)
    worker = sub.add_parser("worker", help="run one worker in the foreground")
    worker.add_argument("--id", help="worker id, unique per live process")
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    worker.set_defaults(func=cmd_worker)
    commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from infra.stack import StackError
    try:
        return args.func(args)
    except (ConfigError, InstallError, StackError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted")


if __name__ == "__main__":
    sys.exit(main())
