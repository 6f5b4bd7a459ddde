"""`python -m maskflow.infra.ops.credentials DIR`: every service's credentials for a compose or
Kubernetes deployment, created once at random and kept (rerunning adds only what is missing).

The layout is roles.Credentials': ``DIR/<role>/<key>``, one folder per Secret::

    kubectl create secret generic maskflow-api -n maskflow --from-file=DIR/api
    kubectl create secret generic maskflow-worker -n maskflow --from-file=DIR/worker
    kubectl create secret generic maskflow-webhooks -n maskflow --from-file=DIR/webhooks

docker-compose.yml mounts each file into the one service that needs it.  The folders are
mode 0700; the files 0644, because a compose secret keeps its host file's mode and the Redis
image reads its users.acl as another user than the one that wrote it: the folder is what
keeps them private on the host, and each container sees only its own.  MinIO's root user is
not here: it is the operator's (MINIO_ROOT_USER / MINIO_ROOT_PASSWORD in .env).
"""
from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

from maskflow.infra.ops.roles import Credentials
from maskflow.infra.wiring.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maskflow.infra.ops.credentials",
                                     description="create every service's credentials in DIR")
    parser.add_argument("directory", type=Path, metavar="DIR")
    args = parser.parse_args(argv)
    try:
        cfg = load_config()
    except ConfigError as exc:
        print(f"maskflow credentials: {exc}", file=sys.stderr)
        return 2
    credentials = Credentials(args.directory, mode=0o644)
    credentials.generate(cfg)
    tokens = credentials.path("api", "tokens")
    if not tokens.exists():  # the API asks for a token from the start
        credentials.write("api", "tokens", secrets.token_urlsafe(32) + "\n")
    credentials.secret("webhooks", "webhook-secret")  # the HMAC key of every webhook it signs
    if not credentials.path("worker", "tokens").exists():  # compose mounts it where the API's is
        credentials.write("worker", "tokens", "")
    print(f"credentials ready in {args.directory}; the API's bearer token is in {tokens}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
