"""Running the stack: `maskflow up`, `down`, `api` and `worker`.

`api` and `worker` replace this process with ``python -m maskflow.api`` / ``python -m maskflow.functions`` so
infra never imports them.  infra.stack is imported only when a command runs: it is slow to
import, and --help should not wait for it.
"""
from __future__ import annotations

import os
import sys
from typing import NoReturn

from maskflow.infra.sdk.cli.exits import EXIT_OK
from maskflow.infra.wiring.config import Config


def up(args, cfg: Config) -> int:
    from maskflow.infra.ops.stack import Stack
    stack = Stack(cfg)
    stack.up(app=not args.servers_only)
    print(f"Redis   redis://{cfg.redis.host}:{cfg.redis.port}/{cfg.redis.db}  (events list {cfg.queue.events_key})")
    print(f"MinIO   http://{cfg.minio.endpoint}  bucket {cfg.minio.bucket}  (public {cfg.minio_public_endpoint})")
    if not args.servers_only:
        print(f"API     {cfg.api_url}  (web page {cfg.api_url}/, OpenAPI {cfg.api_url}/api/v1/openapi.json)")
        for name, pool in stack.pools():
            print(f"Worker  {name}  serving {', '.join(pool.worker.models)}")
        print(f"Logs    {cfg.data_dir / 'logs'}")
    return EXIT_OK


def down(args, cfg: Config) -> int:
    from maskflow.infra.ops.stack import Stack
    stopped = Stack(cfg).down()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return EXIT_OK


def api(args, cfg: Config) -> NoReturn:
    _become("maskflow.api", [], args.config)


def worker(args, cfg: Config) -> NoReturn:
    extra = (["--id", args.id] if args.id else []) + (["--burst"] if args.burst else [])
    _become("maskflow.functions", extra, args.config)


def _become(module: str, extra: list[str], config: str | None) -> NoReturn:
    """Replace this process with ``python -m module``; the config was loaded (checked) already."""
    if config:
        os.environ["MASKFLOW_CONFIG"] = config
    os.execv(sys.executable, [sys.executable, "-m", module, *extra])
