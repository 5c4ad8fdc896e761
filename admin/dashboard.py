"""The dashboard: a login form, the page, and the JSON of its live figures."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from admin.api import json_response
from admin.auth import COOKIE, Sessions, plain_localhost
from admin.crawls import pages_needing_attention
from admin.ratelimit import LoginLimiter
from admin.settings import AdminSettings
from admin.status import Status, StatusReader
from admin.store import AdminStore
from convsync.errors import RetryableError
from convsync.settings import Settings

log = logging.getLogger(__name__)

STATIC: Final = Path(__file__).resolve().parent / "static"
_SECURITY: Final = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


@dataclass
class Sampler:
    """Samples ``convsync status`` periodically into a ring buffer, once someone looks.

    Every sample goes through one :class:`StatusReader` (one Kafka consumer, one Postgres
    connection for the sampler's life); what it keeps is bounded: the ring buffer, the
    last status, at most ``dlq_tail`` DLQ entries and the last sample's errors.
    """

    settings: Settings
    admin: AdminSettings
    samples: deque[dict[str, Any]] = field(init=False)
    reader: StatusReader = field(init=False)
    status: dict[str, Any] | None = None
    dlq: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    taken: int = 0
    _task: asyncio.Task[None] | None = None
    _first: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.samples = deque(maxlen=self.admin.samples)
        self.reader = StatusReader(self.settings, timeout=5.0)

    async def ensure_running(self) -> None:
        """Start sampling (first call, or after the task died) and wait for a first sample.

        Raises :class:`RetryableError` when no sample could be taken in 30 s.
        """
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="admin-sampler")
        try:
            await asyncio.wait_for(self._first.wait(), timeout=30)
        except TimeoutError as e:
            raise RetryableError("no dashboard sample taken yet") from e

    async def stop(self) -> None:
        """Stop sampling and close the reader's clients."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # After a sample still running in its thread: the reader serializes the two.
        await asyncio.to_thread(self.reader.close)

    async def _loop(self) -> None:
        while True:
            try:
                await self.sample()
            except RetryableError as e:
                # Reported on the page (errors) and in the log; the next sample retries.
                self.errors = [f"sample failed: {e}"]
                log.warning("dashboard sample failed: %s", e)
            self._first.set()
            await asyncio.sleep(self.admin.sample_seconds)

    async def sample(self) -> None:
        """Take one sample: status (lag, row counts), events offsets, DLQ tail."""
        # The page shows crawls and statistics from their own paged queries: none listed.
        status: Status = await asyncio.to_thread(self.reader.collect, listed_pages=0)
        errors = list(status.errors)
        try:
            self.dlq = await asyncio.to_thread(self.reader.dlq_tail, self.admin.dlq_tail)
        except RetryableError as e:
            errors.append(str(e))
        events_topic = self.settings.topic("events")
        produced = sum(status.high_watermarks.get(events_topic, {}).values())
        now = time.time()
        point: dict[str, Any] = {
            "t": now,
            "produced": produced,
            "rows": status.events_rows,
            "events_per_s": None,
            "rows_per_s": None,
        }
        if self.samples:
            last = self.samples[-1]
            dt = now - last["t"]
            if dt > 0:
                point["events_per_s"] = max(0.0, (produced - last["produced"]) / dt)
                point["rows_per_s"] = max(0.0, (status.events_rows - last["rows"]) / dt)
        self.samples.append(point)
        self.taken += 1
        self.status = status.as_json()
        self.errors = errors
        if errors:
            log.warning("dashboard sample incomplete: %s", "; ".join(errors))


class Dashboard:
    """Dashboard handlers; ``store`` is set when the app starts."""

    def __init__(self, settings: Settings, admin: AdminSettings, sessions: Sessions) -> None:
        self.settings = settings
        self.admin = admin
        self.token = settings.admin_token.get_secret_value()
        self.sessions = sessions
        self.limiter = LoginLimiter(
            burst=admin.login_burst, per_minute=admin.login_per_minute, clients=admin.login_clients
        )
        self.sampler = Sampler(settings, admin)
        self.store: AdminStore | None = None

    async def page(self, _request: web.Request) -> web.StreamResponse:
        """GET /dashboard: the HTML page (its script fetches /dashboard/data)."""
        return web.FileResponse(STATIC / "dashboard.html", headers=_SECURITY)

    async def script(self, _request: web.Request) -> web.StreamResponse:
        """GET /dashboard.js."""
        return web.FileResponse(STATIC / "dashboard.js", headers=_SECURITY)

    async def style(self, _request: web.Request) -> web.StreamResponse:
        """GET /dashboard.css."""
        return web.FileResponse(STATIC / "dashboard.css", headers=_SECURITY)

    async def login_form(self, _request: web.Request, *, status: int = 401) -> web.Response:
        """The login form (the answer to an unauthenticated page request)."""
        html = (STATIC / "login.html").read_text(encoding="utf-8")
        return web.Response(text=html, content_type="text/html", status=status, headers=_SECURITY)

    async def login(self, request: web.Request) -> web.Response:
        """POST /login: a right token sets the session cookie (303 to the page).

        Attempts are limited per client address (429 with ``Retry-After``, before the
        token is looked at). The cookie is ``HttpOnly``, ``SameSite=Strict``, lives
        ``session_seconds`` (``Max-Age``, and the value itself expires), and is ``Secure``
        unless the form was posted from a plain-HTTP loopback page (:func:`plain_localhost`).
        """
        wait = self.limiter.attempt(request.remote or "unknown")
        if wait > 0:
            log.info("dashboard login refused: too many attempts from one address")
            return json_response(
                {"error": "too many login attempts, retry later"},
                status=429,
                **{"Retry-After": LoginLimiter.retry_after(wait)},
            )
        if request.content_type not in ("application/x-www-form-urlencoded", ""):
            return json_response({"error": "expected a form (urlencoded)"}, status=400)
        form = await request.post()
        given = str(form.get("token", "")).encode("utf-8", "surrogateescape")
        if not self.token or not hmac.compare_digest(given, self.token.encode()):
            log.info("dashboard login refused")
            return await self.login_form(request, status=403)
        base = request.path.rsplit("/", 1)[0]
        response = web.Response(status=303, headers={"Location": f"{base}/dashboard"})
        response.set_cookie(
            COOKIE,
            self.sessions.issue(),
            httponly=True,
            samesite="Strict",
            path=base or "/",
            max_age=self.sessions.seconds,
            secure=not plain_localhost(request),
        )
        return response

    async def data(self, _request: web.Request) -> web.Response:
        """GET /dashboard/data: every figure of the page as JSON."""
        assert self.store is not None
        await self.sampler.ensure_running()
        overview = await self.store.overview()
        overview["attention"] = await pages_needing_attention(self.store)
        status = self.sampler.status or {}
        return json_response(
            {
                **overview,
                "lags": status.get("lags", []),
                "lag_by_group": status.get("lag_by_group", {}),
                "dlq_records": status.get("dlq_records", 0),
                "pages_attention": status.get("pages_attention", []),
                "events_rows": status.get("events_rows", 0),
                "conversations_rows": status.get("conversations_rows", 0),
                "rates": list(self.sampler.samples),
                "dlq_recent": self.sampler.dlq,
                "errors": self.sampler.errors,
                "sampled_every_s": self.sampler.admin.sample_seconds,
            }
        )
