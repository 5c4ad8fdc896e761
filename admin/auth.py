"""Who may use the admin API: the token's rules, bearer checks, dashboard session cookies."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import urlsplit

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from convsync.errors import ConfigError

log = logging.getLogger(__name__)

COOKIE: Final = "convsync_admin"
MIN_TOKEN_LENGTH: Final = 32
# Words of example files and first guesses; a token made only of them (and separators,
# digits, repeats) is refused, e.g. "CHANGE-ME", "changeme-changeme-...", "admin123".
_PLACEHOLDERS: Final = (
    "changeme",
    "change",
    "replace",
    "me",
    "secret",
    "password",
    "passwd",
    "pass",
    "admin",
    "token",
    "convsync",
    "default",
    "example",
    "placeholder",
    "test",
    "todo",
    "dummy",
    "your",
    "here",
    "insert",
    "fixme",
    "xxx",
    "letmein",
    "qwerty",
    "please",
    "set",
    "key",
    "value",
    "random",
    "string",
)
# Longest first, so that "changeme" goes as one word; a substitution, not a nested
# repetition, so that no token makes the check backtrack.
_PLACEHOLDER_WORDS: Final = re.compile("|".join(sorted(_PLACEHOLDERS, key=len, reverse=True)))
_FILLER: Final = re.compile(r"[^a-z]*")
MIN_DISTINCT: Final = 10
# Query keys that look like credentials: refused outright, URLs end up in logs.
_QUERY_KEYS: Final = frozenset({"token", "access_token", "admin_token", "bearer", "auth"})
_PUBLIC: Final = frozenset({"login", "style"})
_SAFE: Final = frozenset({"GET", "HEAD"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def check_token(token: str) -> None:
    """Refuse a token an attacker could guess; an empty one (admin off) is allowed.

    Raises :class:`ConfigError` saying what is wrong and how to make a good one.
    """
    if not token:
        return
    how = "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"CONVSYNC_ADMIN_TOKEN has {len(token)} characters, at least "
            f"{MIN_TOKEN_LENGTH} are needed; {how}"
        )
    if any(c.isspace() or not c.isprintable() for c in token):
        raise ConfigError(f"CONVSYNC_ADMIN_TOKEN holds spaces or control characters; {how}")
    if _FILLER.fullmatch(_PLACEHOLDER_WORDS.sub("", token.lower())):
        raise ConfigError(f"CONVSYNC_ADMIN_TOKEN is a placeholder, not a secret; {how}")
    if len(set(token)) < MIN_DISTINCT:
        raise ConfigError(
            f"CONVSYNC_ADMIN_TOKEN repeats too few characters ({len(set(token))} distinct, "
            f"at least {MIN_DISTINCT}); {how}"
        )


class Sessions:
    """Dashboard session cookies: ``<expiry>.<nonce>.<mac>``, checked on every request.

    The MAC is HMAC-SHA256 over expiry and nonce, keyed by a key derived from the admin
    token, so the cookie is never the token, works on every gateway worker, and every
    session ends when the token changes. An expired or altered value is refused.
    """

    def __init__(self, token: str, *, seconds: int, clock: Callable[[], float] = time.time) -> None:
        self.seconds = seconds
        self._key = hmac.new(token.encode(), b"convsync-dashboard-session", hashlib.sha256).digest()
        self._clock = clock

    def _mac(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self) -> str:
        """Return a new cookie value, valid for ``seconds`` from now."""
        payload = f"{int(self._clock()) + self.seconds}.{secrets.token_urlsafe(12)}"
        return f"{payload}.{self._mac(payload)}"

    def valid(self, value: str) -> bool:
        """Return True when ``value`` was issued here and has not expired."""
        payload, _, mac = value.rpartition(".")
        expiry, _, _nonce = payload.partition(".")
        if not expiry.isdigit() or len(expiry) > 12:
            return False
        if not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            return False
        return self._clock() < int(expiry)


def plain_localhost(request: web.BaseRequest) -> bool:
    """Return True when the browser posted from a plain-HTTP page of a loopback address.

    The browser's ``Origin`` header (sent with every form POST) is ``http://`` and names
    ``localhost``, a 127.0.0.0/8 address or ``[::1]``, and the connection has no TLS.
    Only then is the session cookie sent without ``Secure``: such a cookie is stored for
    that loopback host and never leaves the machine. A proxy in front cannot make this
    true (the browser writes ``Origin``, not the proxy), and a client that sends no
    ``Origin`` gets ``Secure``.
    """
    origin = request.headers.get(hdrs.ORIGIN, "")
    if request.secure or not origin.startswith("http://"):
        return False
    try:
        host = urlsplit(origin).hostname
    except ValueError:
        return False
    return _loopback(host or "")


def _loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


def auth_middleware(
    token: str, sessions: Sessions | None = None, *, unauthorized: Handler | None = None
) -> Middleware:
    """Return a middleware that admits a request with the right bearer token.

    401 without credentials, 403 with wrong ones, 400 when the query string carries one.
    An empty ``token`` turns the admin API off: every request is answered 403, with or
    without credentials, the login form and its stylesheet included. A session cookie of
    ``sessions`` is accepted for GET and HEAD only, so a cross-site form cannot change
    anything. ``unauthorized`` renders the 401 answer of HTML pages (the login form).
    """
    expected = token.encode()

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
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                return _problem(401, "expected Authorization: Bearer <token>", **_challenge())
            given = value.strip().encode("utf-8", "surrogateescape")
            ok = hmac.compare_digest(given, expected)
        elif COOKIE in request.cookies and request.method in _SAFE and sessions is not None:
            ok = sessions.valid(request.cookies[COOKIE])
        else:
            if unauthorized is not None and name is not None and name.startswith("page:"):
                return await unauthorized(request)
            return _problem(401, "missing bearer token", **_challenge())
        if not ok:
            log.info("admin request refused: wrong or expired credentials for %s", request.path)
            return _problem(403, "wrong credentials")
        return await handler(request)

    return middleware


def _challenge() -> dict[str, str]:
    return {"WWW-Authenticate": 'Bearer realm="convsync-admin"'}
