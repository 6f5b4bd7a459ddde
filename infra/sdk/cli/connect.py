"""The API a command talks to: --api-url and --token, else the config's."""
from __future__ import annotations

from maskflow.infra.sdk.client import Client
from maskflow.infra.wiring.config import Config


def api_client(args, cfg: Config) -> Client:
    """The API named by --api-url and --token, else by the config."""
    token = args.token if args.token is not None else (cfg.api.token or None)
    return Client(args.api_url or _config_api_url(cfg), token=token)


def _config_api_url(cfg: Config) -> str:
    host = cfg.api.host
    if host in ("", "0.0.0.0", "::", "[::]"):  # a bind-all address is not something to call
        host = "127.0.0.1"
    return f"http://{host}:{cfg.api.port}"
