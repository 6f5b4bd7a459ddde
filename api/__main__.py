"""`python -m api [--config FILE]`: serve the API with waitress, settings from `api.*`."""
from __future__ import annotations

import argparse
import logging
import sys

from infra.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api", description="maskflow HTTP API")
    parser.add_argument("--config", help="TOML config file (default: $MASKFLOW_CONFIG)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        cfg = load_config(args.config)
        from api.app import build_deps, create_app  # after the config: imports OpenCV
        from api.resources import MULTIPART_SLACK
        app = create_app(build_deps(cfg))
    except ConfigError as exc:
        print(f"maskflow api: {exc}", file=sys.stderr)
        return 2

    import waitress
    logging.getLogger("maskflow.api").info("listening on http://%s:%d", cfg.api.host, cfg.api.port)
    waitress.serve(app, host=cfg.api.host, port=cfg.api.port, threads=cfg.api.threads,
                   channel_timeout=cfg.api.channel_timeout,
                   # Waitress buffers the whole body before the app runs; cap it near the limit.
                   max_request_body_size=cfg.task.max_upload_bytes + MULTIPART_SLACK,
                   ident="maskflow")
    return 0


if __name__ == "__main__":
    sys.exit(main())
