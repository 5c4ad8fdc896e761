"""Bearer-token (or dashboard cookie) authentication of every admin request."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware

log = logging.getLogger(__name__)

COOKIE: Final = "convsync_admin"
# Query keys that look like credentials: refused outright, URLs end up in logs.
_QUERY_KEYS: Final = frozenset({"token", "access_token", "admin_token", "bearer", "auth"})
_PUBLIC: Final = frozenset({"login", "style"})
_SAFE: Final = frozenset({"GET", "HEAD"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def session_value(token: str) -> str:
    """Return the cookie value for ``token``: derived from it, never the token itself."""
    return hmac.new(token.encode(), b"convsync-dashboard-session", hashlib.sha256).hexdigest()


def _problem(status: int, reason: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers)


def token_in_query(request: web.Request, token: bytes) -> bool:
    """Return True when the query string carries a credential (by key, or the token itself)."""
    for key, value in request.query.items():
        if key.lower() in _QUERY_KEYS:
            return True
        if token and hmac.compare_digest(value.encode("utf-8", "surrogateescape"), token):
            return True
    return False


def auth_middleware(token: str, *, unauthorized: Handler | None = None) -> Middleware:
    """Return a middleware that admits a request with the right bearer token.

    401 without credentials, 403 with wrong ones, 400 when the query string carries one.
    An empty ``token`` turns the admin API off: every request is answered 403, with or
    without credentials, the login form and its stylesheet included. The dashboard
    cookie is accepted for GET and HEAD only, so a cross-site form cannot change
    anything. ``unauthorized`` renders the 401 answer of HTML pages (the login form).
    """
    expected = token.encode()
    cookie = session_value(token).encode() if token else b""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        name = request.match_info.route.name
        if not expected:
            # An off switch, not a missing credential: a 401 would invite a retry.
            return _problem(403, "admin API disabled")
        if token_in_query(request, expected):
            log.warning("admin request refused: credential in the query string")
            return _problem(400, "credentials are not accepted in the query string")
        if name in _PUBLIC:
            return await handler(request)
        header = request.headers.get("Authorization")
        given: bytes | None = None
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                return _problem(401, "expected Authorization: Bearer <token>", **_challenge())
            given = value.strip().encode("utf-8", "surrogateescape")
            ok = hmac.compare_digest(given, expected)
        elif COOKIE in request.cookies and request.method in _SAFE:
            given = request.cookies[COOKIE].encode("utf-8", "surrogateescape")
            ok = hmac.compare_digest(given, cookie)
        else:
            if unauthorized is not None and name is not None and name.startswith("page:"):
                return await unauthorized(request)
            return _problem(401, "missing bearer token", **_challenge())
        if not ok:
            log.info("admin request refused: wrong credentials for %s", request.path)
            return _problem(403, "wrong credentials")
        return await handler(request)

    return middleware


def _challenge() -> dict[str, str]:
    return {"WWW-Authenticate": 'Bearer realm="convsync-admin"'}
