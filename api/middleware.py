"""Falcon middleware: the bearer token on /api/v1 and the body size limit of every route."""
from __future__ import annotations

import falcon

from maskflow.api.errors import ApiError
from maskflow.api.tokens import TokenSet

# Body limit of every route that does not set its own `max_body_bytes` (JSON documents).
DEFAULT_MAX_BODY = 64 * 1024


class BearerAuth:
    """With tokens set (api.token, api.tokens), every /api/ route (/api/v1/..., rembg's
    /api/remove) needs `Authorization: Bearer <token>` with one of them (api/tokens.py)."""

    def __init__(self, tokens: TokenSet | str):
        self.tokens = TokenSet((tokens,)) if isinstance(tokens, str) else tokens

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not req.path.startswith("/api/"):
            return
        # RFC 7235: the scheme is case-insensitive, and one or more spaces follow it.
        scheme, _, token = (req.get_header("Authorization") or "").partition(" ")
        if not (scheme.lower() == "bearer" and self.tokens.matches(token.lstrip(" "))):
            raise ApiError(401, "unauthorized", "missing or wrong bearer token",
                           headers={"WWW-Authenticate": 'Bearer realm="maskflow"'})


class BodyLimit:
    """Refuse a body over its route's limit (`max_body_bytes`, else DEFAULT_MAX_BODY) with 413.

    Checked on Content-Length before anything is read. Waitress de-chunks a chunked body and
    sets Content-Length, so chunked bodies are covered too (Falcon reads a body without
    Content-Length as empty, under any server).
    """

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params) -> None:
        limit = getattr(resource, "max_body_bytes", DEFAULT_MAX_BODY)
        if req.content_length is not None and req.content_length > limit:
            raise ApiError(413, "payload_too_large", f"the request body exceeds {limit} bytes")
