"""`python -m maskflow.api [--config FILE]`: serve the API with waitress (api/server.py), settings from `api.*`."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from maskflow.infra.wiring.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maskflow.api", description="maskflow HTTP API")
    parser.add_argument("--config", help="TOML config file (default: $MASKFLOW_CONFIG)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        cfg = load_config(args.config)
        from maskflow.api.server import create_server, ensure_fd_limit
        ensure_fd_limit(cfg.api.connection_limit)
        from maskflow.api.app import build_deps, create_app  # after the config: imports OpenCV
        from maskflow.api.uploads import MULTIPART_SLACK
        from maskflow.infra.wiring.connections import tls_check
        problem = tls_check(cfg)  # waiting would not cure it
        if problem:
            raise ConfigError(problem)
        deps = build_deps(cfg, args.config)
        server = create_server(create_app(deps), cfg,
                               max_body_bytes=cfg.task.max_upload_bytes + MULTIPART_SLACK,
                               metrics=deps.http_metrics)
    except ConfigError as exc:
        print(f"maskflow api: {exc}", file=sys.stderr)
        return 2
    # SIGHUP: load the tokens again (off the signal handler: reloading reads files, takes a lock).
    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=deps.tokens.reload, daemon=True).start())

    logging.getLogger("maskflow.api").info("listening on http://%s:%d", cfg.api.host, cfg.api.port)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
