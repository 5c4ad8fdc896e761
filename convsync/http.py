"""HTTP listeners with deadlines: idle keep-alive, request headers, request body.

aiohttp bounds an idle keep-alive connection (``keepalive_timeout``, which ``web.run_app``
sets to 75 s and a bare ``AppRunner`` to an hour) but has no deadline for a request's
headers or body: a client sending one byte a second holds its connection, and the memory
behind it, for as long as it likes. :func:`listen` puts a small protocol between each
connection and aiohttp's ``RequestHandler`` that closes a connection whose request headers
take longer than :attr:`Deadlines.headers`, counted from the connection's opening or from
the first byte of a request; :func:`read_body` and :func:`body_deadline` give reading a
body :attr:`Deadlines.body`, then answer ``408`` and close the connection.

The protocol sees the bytes as they arrive and learns that a request's headers are
complete when aiohttp calls the server's ``request_handler`` (the attribute
``install_fast_path`` of the gateway replaces too). :func:`listen` checks at start-up, on a
socket pair, that this aiohttp still works that way (:func:`check_support`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, cast

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Middleware

log = logging.getLogger(__name__)

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
AppHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TIMED_OUT: Final = "request body not received in time"
# After a 408, seconds the client has to read it and close before the connection drops.
GRACE: Final = 1.0


@dataclass(frozen=True, slots=True)
class Deadlines:
    """Seconds a connection may take: idle between requests, per request's headers, body."""

    keepalive: float = 75.0
    headers: float = 10.0
    body: float = 30.0


class SafeAccessLogger(AbstractAccessLogger):
    """Access log lines without query strings (they may carry a token), at DEBUG.

    At INFO a busy gateway would log every webhook.
    """

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.debug(
            "%s %s %d %.1fms", request.method, request.path, response.status, time * 1000
        )


def make_runner(app: web.Application, deadlines: Deadlines) -> web.AppRunner:
    """Return a runner of ``app`` with the keep-alive deadline and the safe access log."""
    return web.AppRunner(
        app, access_log_class=SafeAccessLogger, keepalive_timeout=deadlines.keepalive
    )


class _Watches:
    """The watched connections of one listener, and the sweep that cuts off late headers.

    One timer per listener rather than one per request: a connection only notes when its
    header clock started, and a sweep every ``tick`` seconds (an eighth of the deadline,
    at most 0.25 s, so that connections opened together are not all closed in one burst)
    closes those past the deadline. It runs only while some clock runs.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.tick = min(0.25, max(0.02, seconds / 8))
        self.loop = asyncio.get_running_loop()
        self.by_handler: dict[object, _Watch] = {}
        self.pending: set[_Watch] = set()
        self.handled = 0  # requests that reached the hooked handler
        self._sweep: asyncio.TimerHandle | None = None

    def started_clock(self, watch: _Watch) -> None:
        self.pending.add(watch)
        if self._sweep is None:
            self._sweep = self.loop.call_later(self.tick, self._run)

    def _run(self) -> None:
        self._sweep = None
        now = self.loop.time()
        for watch in [w for w in self.pending if now - w.since >= self.seconds]:
            watch.expire()
        if self.pending:
            self._sweep = self.loop.call_later(self.tick, self._run)


class _Watch(asyncio.Protocol):
    """Forwards a connection to aiohttp's handler; closes it when headers come too late.

    The header clock runs from the connection's opening, and from the first byte after a
    request was handled, until aiohttp hands the next request to the server's handler.
    """

    __slots__ = ("_inner", "_open", "_transport", "_watches", "since")

    def __init__(self, inner: asyncio.Protocol, watches: _Watches) -> None:
        self._inner = inner
        self._watches = watches
        self._transport: asyncio.Transport | None = None
        self._open = 0  # requests handed to the handler and not answered yet
        self.since = 0.0  # when the header clock started, if in watches.pending

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._watches.by_handler[self._inner] = self
        self._start_clock()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._open and self not in self._watches.pending:
            self._start_clock()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._watches.pending.discard(self)
        self._watches.by_handler.pop(self._inner, None)
        self._transport = None
        self._inner.connection_lost(exc)

    def started(self) -> None:
        """A request's headers are complete: its handler runs now."""
        self._open += 1
        self._watches.handled += 1
        self._watches.pending.discard(self)

    def ended(self) -> None:
        """A request's handler returned."""
        self._open -= 1

    def _start_clock(self) -> None:
        self.since = self._watches.loop.time()
        self._watches.started_clock(self)

    def expire(self) -> None:
        """The header deadline passed: close the connection (no request is handled)."""
        self._watches.pending.discard(self)
        if self._open or self._transport is None:
            return
        log.debug("connection closed: request headers late (%.0fs)", self._watches.seconds)
        self._transport.abort()


def _watched(server: web.Server, seconds: float) -> tuple[Callable[[], asyncio.Protocol], _Watches]:
    """Hook ``server``'s request handler; return the protocol factory that watches."""
    watches = _Watches(seconds)
    by_handler = watches.by_handler
    inner: Handler = server.request_handler

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        watch = by_handler.get(request.protocol)
        if watch is None:
            return await inner(request)
        watch.started()
        try:
            return await inner(request)
        finally:
            watch.ended()

    server.request_handler = handle

    def factory() -> asyncio.Protocol:
        return _Watch(server(), watches)

    return factory, watches


async def listen(
    runner: web.AppRunner,
    host: str,
    port: int,
    deadlines: Deadlines,
    *,
    reuse_port: bool = False,
) -> asyncio.Server:
    """Serve ``runner`` (set up, by :func:`make_runner`) on ``host:port`` with ``deadlines``.

    Call after anything else that replaces ``runner.server.request_handler`` and before
    the first connection. Close the returned server, then clean up the runner, to stop.
    Raises :class:`RuntimeError` when this aiohttp cannot enforce the deadlines.
    """
    server = runner.server
    if server is None:
        raise RuntimeError("listen needs a runner that is set up")
    await check_support(deadlines)
    probe = server()
    if getattr(probe, "keepalive_timeout", None) != deadlines.keepalive:
        raise RuntimeError("aiohttp ignored keepalive_timeout: make the runner with make_runner")
    factory, _ = _watched(server, deadlines.headers)
    return await asyncio.get_running_loop().create_server(
        factory, host, port, reuse_port=reuse_port or None, backlog=128
    )


_SUPPORTED: list[bool] = []


async def check_support(deadlines: Deadlines) -> None:
    """Prove on a socket pair that this aiohttp passes requests through the hook.

    A request on a watched connection must reach the hooked handler (disarming the header
    clock) and a connection that never finishes its headers must be closed. Run once per
    process. Raises :class:`RuntimeError` when either fails.
    """
    if _SUPPORTED:
        return

    async def ok(_request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(status=204)

    server = web.Server(ok, keepalive_timeout=deadlines.keepalive, access_log=None)
    factory, watches = _watched(server, 0.05)
    loop = asyncio.get_running_loop()
    answers: list[bytes] = []
    for request in (b"GET /probe HTTP/1.1\r\nHost: probe\r\n\r\n", b"GET /probe HTTP/1.1\r\n"):
        ours, theirs = socket.socketpair()
        with contextlib.closing(theirs):
            transport, _ = await loop.connect_accepted_socket(factory, ours)
            theirs.setblocking(False)
            await loop.sock_sendall(theirs, request)
            try:
                answers.append(await asyncio.wait_for(loop.sock_recv(theirs, 1024), 2.0))
            except TimeoutError:
                answers.append(b"(nothing)")
            transport.close()
    await server.shutdown(1.0)
    if not answers[0].startswith(b"HTTP/1.1 204") or watches.handled != 1:
        raise RuntimeError(
            f"aiohttp did not answer through the hook ({watches.handled} requests seen; "
            f"answer {answers[0][:40]!r}): the header deadline cannot be enforced"
        )
    if answers[1] != b"":
        raise RuntimeError(
            f"a late request head was not cut off ({answers[1][:40]!r}): the header "
            "deadline cannot be enforced"
        )
    _SUPPORTED.append(True)


class _CloseAfter(web.Response):
    """A response after which the connection closes within :data:`GRACE` seconds.

    Without this, aiohttp goes on reading an unfinished body for up to ``lingering_time``
    after answering, at whatever pace the client sends it. Closing at once is no better:
    a socket closed with unread bytes sends a reset, which can reach the client before
    it read the answer. So: the answer, then end of stream (the client reads both and
    closes), then the connection is dropped after the grace, if still open.
    """

    def __init__(self, transport: asyncio.Transport | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._closing = transport
        self.force_close()

    async def write_eof(self, data: bytes = b"") -> None:
        await super().write_eof(data)
        transport = self._closing
        if transport is None or transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(GRACE, _drop, transport)


def _drop(transport: asyncio.Transport) -> None:
    if not transport.is_closing():
        transport.abort()


def timed_out(request: web.BaseRequest) -> web.Response:
    """Return the ``408`` answer to a body that came too slowly (the connection then closes)."""
    return _CloseAfter(
        request.transport,
        status=408,
        text=f'{{"error": "{TIMED_OUT}"}}',
        content_type="application/json",
    )


async def read_body(request: web.BaseRequest, seconds: float) -> bytes:
    """Return the whole body of ``request``, read within ``seconds``.

    Raises :class:`TimeoutError` when it takes longer, and whatever ``request.read()``
    raises (``HTTPRequestEntityTooLarge`` above the app's ``client_max_size``).
    """
    if request.content.is_eof():  # already buffered: the common case, no timer
        return await request.read()
    async with asyncio.timeout(seconds):
        return await request.read()


def body_deadline(seconds: float) -> Middleware:
    """Return a middleware reading every request body within ``seconds`` (else ``408``).

    The handlers then get the body from ``request.read()``/``post()``'s cache. Place it
    after authentication, so that nobody unauthenticated gets a body read.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: AppHandler) -> web.StreamResponse:
        if request.body_exists:
            try:
                await read_body(request, seconds)
            except TimeoutError:
                log.info("%s %s: %s", request.method, request.path, TIMED_OUT)
                return timed_out(request)
        return await handler(request)

    return middleware
