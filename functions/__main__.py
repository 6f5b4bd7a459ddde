"""`python -m maskflow.functions`: run one worker process (what `maskflow worker` and the stack start)."""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from maskflow.functions.worker import build_worker, install_signal_handlers, load_models, reuse_freed_buffers
from maskflow.infra.wiring.config import ConfigError, load_config
from maskflow.infra.wiring.connections import redis_client, tls_check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maskflow worker",
                                     description="Consume MinIO events from Redis and write masks.")
    parser.add_argument("--id", default=f"{socket.gethostname()}:{os.getpid()}",
                        help="worker id, unique per live process (default host:pid)")
    parser.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    parser.add_argument("--config", help="TOML config file (default: $MASKFLOW_CONFIG)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {args.id} %(levelname)s %(message)s")
    if not reuse_freed_buffers():
        logging.info("malloc tuning unavailable (not glibc): image buffers are mapped per use")
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"maskflow worker: {exc}", file=sys.stderr)
        return 2
    problem = tls_check(cfg)  # waiting would not cure it
    if problem:
        print(f"maskflow worker: {problem}", file=sys.stderr)
        return 2
    # Longer than the API's: a worker waits out a slow Redis rather than failing an event.
    r = redis_client(cfg, timeout=10, connect_timeout=5, health_check_interval=15)
    worker = build_worker(cfg, args.id, r, lambda: load_models(cfg))
    install_signal_handlers(worker)
    worker.run(burst=args.burst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
