"""The aiohttp application of the public port: Meta's webhook handshake and POSTs, health.

Nothing else is served here: the metrics, the admin API and the dashboard are on the
gateway's private listener, which the command composes (``cli/listeners.py``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from convsync.errors import ConfigError, RetryableError
from convsync.http import Deadlines, make_runner, timed_out
from convsync.settings import Settings
from producers.webhook.admit import Refused, admit
from producers.webhook.metrics import Metrics, sharing
from producers.webhook.publisher import Extra, Headers, Publisher
from producers.webhook.settings import GatewaySettings
from producers.webhook.signature import HEADER, LEGACY_HEADER

log = logging.getLogger(__name__)

EVENT_RECEIVED: Final = "EVENT_RECEIVED"
_ROUTES: Final = frozenset({"/webhook", "/healthz", "/readyz"})
_CHUNK: Final = 64 * 1024
NOT_READY: Final = "not ready"


def _reject(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


class Gateway:
    """The request handlers, holding the secret, the publisher and the metrics."""

    def __init__(
        self,
        settings: Settings,
        gateway: GatewaySettings,
        publisher: Publisher,
        metrics: Metrics,
    ) -> None:
        secret = settings.app_secret.get_secret_value()
        if not secret:
            raise ConfigError("CONVSYNC_APP_SECRET is empty: webhooks cannot be verified")
        self._secret = secret.encode()
        self._verify_token = settings.verify_token.get_secret_value().encode()
        self.gateway = gateway
        self.publisher = publisher
        self.metrics = metrics
        self.received = 0
        # The topic keeping every verified body for `convsync relay` (None: no relay).
        self.relay_topic = (
            settings.topic("relay") if settings.relay_url.get_secret_value() else None
        )
        self._unready = "ok"  # the last reason logged for a 503 of /readyz

    async def handshake(self, request: web.Request) -> web.Response:
        """GET /webhook: echo ``hub.challenge`` when mode and verify token match, else 403."""
        query = request.query
        token = query.get("hub.verify_token", "").encode("utf-8", "surrogateescape")
        challenge = query.get("hub.challenge")
        ok = (
            bool(self._verify_token)
            and query.get("hub.mode") == "subscribe"
            and challenge is not None
            and hmac.compare_digest(token, self._verify_token)
        )
        if not ok or challenge is None:
            log.info("webhook handshake refused")
            return web.Response(status=403, text="forbidden")
        log.info("webhook handshake accepted")
        return web.Response(text=challenge)

    async def _read_body(self, request: web.BaseRequest) -> bytes | None:
        """Return the body, or None as soon as it exceeds the limit (read no further).

        Raises :class:`TimeoutError` when the body takes longer than the body deadline.
        """
        if request.content.is_eof():  # all of it arrived with the headers: no timer
            return await self._read_within_limit(request)
        async with asyncio.timeout(self.gateway.body_timeout):
            return await self._read_within_limit(request)

    async def _read_within_limit(self, request: web.BaseRequest) -> bytes | None:
        limit = self.gateway.max_body_bytes
        if request.content_length is not None:
            if request.content_length > limit:
                return None
            # The length is announced and within the limit: aiohttp reads exactly that.
            return await request.read()
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def receive(self, request: web.BaseRequest) -> web.Response:
        """POST /webhook: verify, parse, publish each entry as a delivery; 200 only once
        Kafka confirmed every one (and the relay's copy of the body, when relaying)."""
        self.received += 1
        # 1. Size and time before anything else: an oversized body is not read to its
        #    end, a body trickling in past the deadline gets a 408 and the connection closes.
        try:
            body = await self._read_body(request)
        except TimeoutError:
            log.info("webhook refused: body not received in %.0fs", self.gateway.body_timeout)
            return timed_out(request)
        if body is None:
            return _reject(413, "body too large")
        self.metrics.body_bytes.observe(len(body))
        # 2. Signature, parse, split by page: any refusal before anything is produced.
        signature = request.headers.get(HEADER)
        legacy = request.headers.get(LEGACY_HEADER)
        received_at = int(time.time() * 1000)
        decision = admit(
            self._secret,
            body,
            signature,
            legacy=legacy,
            max_record_bytes=self.gateway.max_record_bytes,
            received_at=received_at,
        )
        if isinstance(decision, Refused):
            if decision.verdict is not None:
                self.metrics.count_signature_failure(decision.verdict)
            log.info(
                "webhook refused: %s%s (%d bytes)",
                decision.reason,
                f": {decision.detail}" if decision.detail else "",
                len(body),
            )
            return _reject(decision.status, decision.reason)
        records = decision.records
        for field in decision.ignored:
            self.metrics.count_ignored(field)
        extra: list[Extra] = []
        if self.relay_topic is not None:
            # The body as signed, with its signature headers, for the old inbox.
            headers: Headers = [(HEADER, (signature or "").encode("utf-8", "surrogateescape"))]
            if legacy is not None:
                headers.append((LEGACY_HEADER, legacy.encode("utf-8", "surrogateescape")))
            headers.append(("received-at", str(received_at).encode()))
            key = records[0][0] if records else None
            extra.append((self.relay_topic, key, body, headers))
        # 3. Publish and wait for Kafka's confirmation of every record.
        try:
            took = await self.publisher.publish(records, extra)
        except RetryableError as e:
            log.warning("webhook not acknowledged (%d deliveries): %s", len(records), e)
            return _reject(503, "events not durable yet, retry")
        self.metrics.produce_seconds.observe(took)
        for platform in decision.platforms:
            self.metrics.count_delivery(platform)
        return web.Response(text=EVENT_RECEIVED)

    async def healthz(self, _request: web.Request) -> web.Response:
        """GET /healthz: 200 while the process can work (503 once the producer failed)."""
        if self.publisher.fatal is not None:
            return _reject(503, "producer failed; restart the process")
        return web.json_response({"status": "ok"})

    async def readyz(self, _request: web.Request) -> web.Response:
        """GET /readyz: 200 when Kafka is reachable and the topic has leaders.

        A 503 says only "not ready": the reason (Kafka's own error text, topic names)
        goes to the log, once per change of reason, since this port faces the internet.
        """
        ok, why = await self.publisher.ready()
        if not ok:
            if why != self._unready:
                log.warning("not ready: %s", why)
            self._unready = why
            return _reject(503, NOT_READY)
        if self._unready != "ok":
            log.info("ready again")
            self._unready = "ok"
        return web.json_response({"status": "ready"})


GATEWAY: Final = web.AppKey("gateway", Gateway)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _count_requests(metrics: Metrics) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.path if request.path in _ROUTES else "other"
        try:
            response = await handler(request)
        except web.HTTPException as e:
            metrics.count_request(route, e.status)
            raise
        metrics.count_request(route, response.status)
        return response

    return middleware


def make_app(
    settings: Settings,
    gateway: GatewaySettings,
    *,
    metrics: Metrics | None = None,
) -> web.Application:
    """Return the gateway application; its producer starts and flushes with the app.

    Raises :class:`ConfigError` when the app secret is empty.
    """
    metrics = metrics or Metrics()
    publisher = Publisher(
        settings,
        settings.topic("deliveries"),
        confirm_timeout=gateway.produce_timeout,
        linger_ms=gateway.linger_ms,
        max_record_bytes=gateway.max_record_bytes,
    )
    handlers = Gateway(settings, gateway, publisher, metrics)
    # aiohttp's own limit sits above ours, so ours (413, read no further) answers first.
    app = web.Application(
        client_max_size=gateway.max_body_bytes + 1, middlewares=[_count_requests(metrics)]
    )
    app[GATEWAY] = handlers
    app.router.add_get("/webhook", handlers.handshake)
    app.router.add_post("/webhook", handlers.receive)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)

    async def producer_lifecycle(_app: web.Application) -> AsyncIterator[None]:
        publisher.start()
        yield
        left = await publisher.close()
        log.info(
            "gateway pid %d stopped: %d webhook POSTs, %d records unconfirmed",
            os.getpid(),
            handlers.received,
            left,
        )

    async def metrics_lifecycle(_app: web.Application) -> AsyncIterator[None]:
        async with sharing(metrics):
            yield

    app.cleanup_ctx.append(producer_lifecycle)
    app.cleanup_ctx.append(metrics_lifecycle)
    return app


def install_fast_path(runner: web.AppRunner) -> None:
    """Answer ``POST /webhook`` on ``runner`` without the router and the middlewares.

    Call after ``runner.setup()`` and before the first connection. Every other request
    (the handshake, health, unknown paths, and a POST that asks for
    ``Expect: 100-continue``) still goes through the application as before. The webhook
    POST is the gateway's whole load: resolving its route and entering two middleware
    layers cost ~8 us of the ~40 us aiohttp spends per request on this path (measured
    in docs/gateway.md). The request is still built by the application, so its signals
    and limits apply.
    """
    server = runner.server
    if server is None:
        raise RuntimeError("install_fast_path needs a runner that is set up")
    if GATEWAY not in runner.app:
        raise RuntimeError("install_fast_path needs the runner of make_app's application")
    gateway = runner.app[GATEWAY]
    count = gateway.metrics.count_request
    routed = server.request_handler

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if (
            request.method != hdrs.METH_POST
            or request.path != "/webhook"
            or hdrs.EXPECT in request.headers
        ):
            return await routed(request)
        try:
            response = await gateway.receive(request)
        except web.HTTPException as e:
            count("/webhook", e.status)
            raise
        count("/webhook", response.status)
        return response

    server.request_handler = handle


async def start_runner(app: web.Application, deadlines: Deadlines | None = None) -> web.AppRunner:
    """Set up a runner for make_app's ``app`` as ``convsync gateway`` serves it.

    The access log without query strings, the keep-alive deadline, and the
    ``POST /webhook`` fast path. Serve it with :func:`convsync.http.listen`.
    """
    runner = make_runner(app, deadlines or Deadlines())
    await runner.setup()
    install_fast_path(runner)
    return runner
