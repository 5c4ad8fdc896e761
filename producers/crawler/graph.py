"""The Graph API client: one GET, its usage headers, and errors sorted into three families."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import orjson
from yarl import URL

from convsync.errors import RetryableError, ThrottledError
from producers.crawler.exceptions import AppThrottledError, GraphPermanentError
from producers.crawler.urls import GraphOrigin, strip_secrets

log = logging.getLogger(__name__)

# Code 4: "Application request limit reached" (the app-wide limit, X-App-Usage).
APP_THROTTLE_CODE: Final = 4
THROTTLE_CODES: Final = frozenset({4, 17, 32, 613, *range(80001, 80010)})
TRANSIENT_CODES: Final = frozenset({1, 2})
HTTP_REQUEST_TIMEOUT: Final = 408
HTTP_TOO_MANY_REQUESTS: Final = 429
HTTP_REDIRECTS: Final = 300
HTTP_BAD_REQUEST: Final = 400
USAGE_HEADERS: Final = ("X-App-Usage", "X-Page-Usage", "X-Business-Use-Case-Usage")


@dataclass(frozen=True, slots=True)
class Usage:
    """What the usage headers of one response said.

    ``percent`` and ``regain_seconds`` are the worst of the page's own headers
    (``X-Page-Usage``, ``X-Business-Use-Case-Usage``): they pace that page.
    ``app_percent`` and ``app_regain_seconds`` come from ``X-App-Usage``, which every page
    and worker of the app shares (``app_usage.AppLimiter``); ``app_percent`` is None when
    the response had no readable ``X-App-Usage`` (nothing is known, not 0 %).
    """

    percent: float = 0.0
    regain_seconds: float = 0.0
    app_percent: float | None = None
    app_regain_seconds: float = 0.0


def parse_usage(headers: Mapping[str, str]) -> Usage:
    """Return the worst usage found in the usage headers; malformed headers count as 0."""
    worst = {"page": [0.0, 0.0], "app": [0.0, 0.0]}
    app_seen = False
    for name in USAGE_HEADERS:
        text = headers.get(name)
        if not text:
            continue
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            log.warning("ignoring malformed %s header", name)
            continue
        entries: list[Any] = []
        if isinstance(value, dict) and name == "X-Business-Use-Case-Usage":
            for per_id in value.values():
                entries.extend(per_id if isinstance(per_id, list) else [per_id])
        else:
            entries.append(value)
        into = worst["app" if name == "X-App-Usage" else "page"]
        app_seen = app_seen or (name == "X-App-Usage" and isinstance(value, dict))
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            for key in ("call_count", "total_cputime", "total_time"):
                v = entry.get(key)
                if isinstance(v, int | float):
                    into[0] = max(into[0], float(v))
            minutes = entry.get("estimated_time_to_regain_access")
            if isinstance(minutes, int | float):
                into[1] = max(into[1], float(minutes) * 60)
    app_percent = worst["app"][0] if app_seen else None
    return Usage(worst["page"][0], worst["page"][1], app_percent, worst["app"][1])


def classify(status: int, body: bytes, usage: Usage) -> Exception:
    """Return the error to raise for a failed response (never raises itself).

    A Graph error code decides first: throttling codes and HTTP 429 are
    :class:`ThrottledError` (:class:`AppThrottledError` for the app-wide limit: code 4,
    or a throttling code with ``X-App-Usage`` at 100 %), codes 1/2 and any 5xx
    :class:`RetryableError`, other codes :class:`GraphPermanentError`. Without a code (an
    HTML or empty body, e.g. from a proxy) the HTTP status decides: 5xx and 408 (the
    server gave up waiting for the request) are retryable, every other 4xx is permanent,
    and anything else (a 200 with an error object but no code) is retryable.
    """
    code: int | None = None
    subcode: int | None = None
    message = body[:200].decode("utf-8", "replace")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        err = parsed["error"]
        raw_code = err.get("code")
        code = raw_code if isinstance(raw_code, int) else None
        raw_sub = err.get("error_subcode")
        subcode = raw_sub if isinstance(raw_sub, int) else None
        message = str(err.get("message", ""))[:300]
    if code == APP_THROTTLE_CODE or (
        code in THROTTLE_CODES and (usage.app_percent or 0.0) >= 100 and usage.percent < 100
    ):
        # The whole app is over its limit: every page of every worker must wait.
        return AppThrottledError(
            f"Graph API throttled the app (HTTP {status}, code {code}): {message}",
            retry_after=max(usage.app_regain_seconds, usage.regain_seconds),
        )
    if code in THROTTLE_CODES or status == HTTP_TOO_MANY_REQUESTS:
        return ThrottledError(
            f"Graph API throttled (HTTP {status}, code {code}): {message}",
            retry_after=usage.regain_seconds,
        )
    if status >= 500 or code in TRANSIENT_CODES:
        return RetryableError(f"Graph API HTTP {status} (code {code}): {message}")
    if code is None and (status == HTTP_REQUEST_TIMEOUT or not 400 <= status < 500):
        return RetryableError(f"Graph API HTTP {status} (no code): {message}")
    return GraphPermanentError(
        f"Graph API refused (HTTP {status}, code {code}"
        f"{'' if subcode is None else f', subcode {subcode}'}): {message}",
        code=code,
        status=status,
        subcode=subcode,
    )


class PagePacer:
    """Spaces one page's calls at ``rate`` per second, slower as its usage nears 100%."""

    def __init__(self, rate: float, *, slow_down_at: float) -> None:
        self.interval = 1.0 / rate
        self.slow_down_at = slow_down_at
        self.factor = 1.0
        self.next_at = 0.0

    async def wait(self) -> None:
        """Sleep until this page may make its next call, and book that call."""
        now = time.monotonic()
        if self.next_at > now:
            await asyncio.sleep(self.next_at - now)
            now = time.monotonic()
        self.next_at = max(now, self.next_at) + self.interval * self.factor

    def observe(self, usage: Usage) -> None:
        """Adapt to the usage headers of the last response."""
        if usage.percent <= self.slow_down_at:
            self.factor = 1.0
        else:
            over = (usage.percent - self.slow_down_at) / (100.0 - self.slow_down_at)
            self.factor = 1.0 + 4.0 * min(over, 1.0)
        if usage.percent >= 100 and usage.regain_seconds > 0:
            self.pause(usage.regain_seconds)

    def pause(self, seconds: float) -> None:
        """Hold this page's calls for ``seconds`` from now."""
        self.next_at = max(self.next_at, time.monotonic() + seconds)


def backoff(attempt: int, *, base: float, cap: float) -> float:
    """Return the sleep before retry ``attempt`` (1-based): capped exponential, full jitter."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))  # noqa: S311 - jitter


class GraphClient:
    """GETs of Graph API URLs with a page token; one instance per worker process.

    Only URLs under ``origin`` are fetched (:class:`GraphOrigin`); the token goes in the
    Authorization header, and with an app secret every call carries ``appsecret_proof``
    (hex HMAC-SHA256 of the token keyed with the app secret), as Meta requires of apps
    with "Require App Secret" on. Meta reads the proof as a query parameter; it is not a
    secret by itself, but it is kept out of stored URLs and error messages all the same.
    Redirects are not followed: a token never goes where Graph points.
    """

    def __init__(
        self, session: aiohttp.ClientSession, origin: GraphOrigin | str, *, app_secret: str = ""
    ) -> None:
        self.session = session
        self.origin = origin if isinstance(origin, GraphOrigin) else GraphOrigin(origin)
        self._app_secret = app_secret.encode()

    def url(self, node: str, edge: str, params: Mapping[str, str | int]) -> str:
        """Return the URL of ``/{node}/{edge}`` under the origin (see :meth:`GraphOrigin.url`)."""
        return self.origin.url(node, edge, params)

    def proof(self, token: str) -> str | None:
        """Return the ``appsecret_proof`` of ``token`` (None without an app secret)."""
        if not self._app_secret:
            return None
        return hmac.new(self._app_secret, token.encode(), hashlib.sha256).hexdigest()

    async def get(self, url: str, token: str) -> tuple[dict[str, Any], Usage]:
        """GET ``url``; return the JSON object and the usage.

        Raises :class:`ForeignUrlError` (nothing sent) for a URL outside the origin,
        :class:`ThrottledError` (throttling codes, HTTP 429), :class:`RetryableError`
        (5xx, 408, codes 1/2, timeouts, connection errors, broken JSON) or
        :class:`GraphPermanentError` (see :func:`classify`; a redirect too).
        """
        target = strip_secrets(self.origin.check(url))
        proof = self.proof(token)
        if proof is not None:
            target += f"{'&' if '?' in target else '?'}appsecret_proof={proof}"
        headers = {"Authorization": f"Bearer {token}"}
        try:
            # encoded=True: the bytes checked are the bytes sent (no re-quoting, no
            # normalisation of the path by the client).
            async with self.session.get(
                URL(target, encoded=True), headers=headers, allow_redirects=False
            ) as resp:
                body = await resp.read()
                usage = parse_usage(resp.headers)
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as e:
            text = _scrub(f"{type(e).__name__}: {e}", proof)
            raise RetryableError(f"Graph API unreachable: {text}") from e
        if HTTP_REDIRECTS <= status < HTTP_BAD_REQUEST:
            raise GraphPermanentError(
                f"Graph API answered HTTP {status} (a redirect); not followed",
                code=None,
                status=status,
            )
        if status != 200:
            raise classify(status, body, usage)
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise RetryableError(f"Graph API sent broken JSON ({len(body)} bytes)") from e
        if not isinstance(parsed, dict):
            raise RetryableError("Graph API sent JSON that is not an object")
        if isinstance(parsed.get("error"), dict):
            raise classify(status, body, usage)
        return parsed, usage


def _scrub(text: str, proof: str | None) -> str:
    """Return ``text`` without the proof (error texts go to logs and to crawl_state)."""
    return text.replace(proof, "***") if proof else text
