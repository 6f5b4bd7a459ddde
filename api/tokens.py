"""The bearer tokens the API accepts, several at once so they can be rotated without a restart.

`api.token` and `api.tokens` together are the valid set.  When they come from files
(``MASKFLOW_API_TOKENS_FILE``, ``MASKFLOW_API_TOKEN_FILE``) or a TOML config file, the set is
loaded again when one of those files changes (checked at most once a second, on a request)
and on SIGHUP.  Rotating is: add the new token, move the clients over, remove the old one;
requests with a token still listed never fail.  A reload that fails (a malformed file) keeps
the tokens in force and logs why.  A configured tokens file that is empty refuses everyone:
emptying it never turns authentication off.

Tokens are compared as SHA-256 digests with hmac.compare_digest, against every valid token,
so the time taken tells neither a token's length nor which one matched.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from maskflow.infra.wiring.config import CONFIG_FILE_ENV, Config, ConfigError, load_config

log = logging.getLogger("maskflow.api")

TOKEN_FILE_VARIABLES = ("MASKFLOW_API_TOKENS_FILE", "MASKFLOW_API_TOKEN_FILE")
CHECK_EVERY_S = 1.0


def _digest(token: str | bytes) -> bytes:
    return hashlib.sha256(token if isinstance(token, bytes) else token.encode()).digest()


class TokenSet:
    def __init__(self, tokens: tuple[str, ...], files: tuple[Path, ...] = (),
                 reload: Callable[[], Config] | None = None, required: bool = False):
        self.files = files
        self.required = required
        self._reload = reload
        self._lock = threading.Lock()
        self._digests = tuple(_digest(t) for t in tokens)
        self._stamps = self._stat()
        self._checked = time.monotonic()

    @classmethod
    def from_config(cls, cfg: Config, config_path: str | None = None,
                    env: Mapping[str, str] | None = None) -> TokenSet:
        """The config's tokens, watched in the files they came from (this process' environment)."""
        env = os.environ if env is None else env
        config_path = config_path or env.get(CONFIG_FILE_ENV)
        token_files = tuple(Path(env[v]) for v in TOKEN_FILE_VARIABLES if env.get(v))
        files = token_files + ((Path(config_path),) if config_path else ())
        reload = (lambda: load_config(config_path, env)) if files else None
        return cls(cfg.api_tokens, files, reload, required=bool(token_files))

    @property
    def enabled(self) -> bool:
        """Authentication is on: tokens were given, or a file to hold them (even an empty one)."""
        return bool(self._digests) or self.required

    def matches(self, token: str | bytes) -> bool:
        self._reload_if_changed()
        offered = _digest(token)
        found = False
        for expected in self._digests:  # every one, whatever matched: constant time
            found |= hmac.compare_digest(offered, expected)
        return found

    def reload(self) -> bool:
        """Load the tokens again from the config; False (and the old ones kept) if that fails."""
        if self._reload is None:
            return False
        with self._lock:
            self._stamps = self._stat()
            try:
                tokens = self._reload().api_tokens
            except ConfigError as exc:  # its messages name keys and files, never a token
                log.warning("API tokens not reloaded, the previous ones stay valid: %s", exc)
                return False
            self._digests = tuple(_digest(t) for t in tokens)
        log.info("API tokens reloaded: %d valid", len(tokens))
        return True

    def _reload_if_changed(self) -> None:
        now = time.monotonic()
        if self._reload is None or now - self._checked < CHECK_EVERY_S:
            return
        self._checked = now
        if self._stat() != self._stamps:
            self.reload()

    def _stat(self) -> tuple:
        stamps = []
        for path in self.files:
            try:
                st = path.stat()  # follows symlinks: a Kubernetes Secret volume swaps a link
                stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append(None)
        return tuple(stamps)
