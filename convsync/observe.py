"""What a long-running component shows its operators: ``/metrics`` and ``/healthz``.

Every component serves both on an address of its own (``CONVSYNC_<COMPONENT>_METRICS_ADDR``,
``host:port``, 127.0.0.1 by default; docs/operations.md lists them). ``/healthz`` answers
whether the component's *work loop* is alive, not merely its HTTP server: the loop calls
:meth:`Heartbeat.beat` every time it goes round (idle rounds included), and ``/healthz``
answers 503 once the last beat is older than ``stale_after`` seconds.

The server runs on a thread of its own with its own event loop (:func:`serve_in_thread`),
so it answers even while the component's loop is stuck, and says so; a component that
already runs an aiohttp loop of its own may serve the same application there
(:func:`observe_app`). Both listeners keep the HTTP deadlines of :mod:`convsync.http`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from convsync.errors import ConfigError
from convsync.http import Deadlines, listen, make_runner

log = logging.getLogger(__name__)

#: The value of a ``*_METRICS_ADDR`` setting that turns the server off.
OFF: Final = "off"
#: Seconds without a beat after which ``/healthz`` answers 503, unless a component says.
STALE_AFTER: Final = 120.0
# A scrape or a probe has no body and small headers: tight deadlines.
_DEADLINES: Final = Deadlines(keepalive=30.0, headers=5.0, body=5.0)


class Heartbeat:
    """When a component's work loop last went round, and what it was doing.

    ``beat`` is a pair of assignments: cheap enough for every round of a hot loop, and
    safe to call from any thread. ``check``, if given, is asked on every probe and may
    name a reason the component cannot work although its loop turns (a producer that
    failed for good); it must be quick and must not block.
    """

    def __init__(
        self,
        stale_after: float = STALE_AFTER,
        *,
        check: Callable[[], str | None] | None = None,
    ) -> None:
        if stale_after <= 0:
            raise ValueError("stale_after must be positive")
        self.stale_after = stale_after
        self.check = check
        self.state = "starting"
        self.last_beat = time.monotonic()

    def beat(self, state: str | None = None) -> None:
        """Record that the loop went round (``state``: what it does now, e.g. standby)."""
        if state is not None:
            self.state = state
        self.last_beat = time.monotonic()

    def age(self) -> float:
        """Return the seconds since the last beat."""
        return time.monotonic() - self.last_beat

    def report(self) -> tuple[bool, dict[str, Any]]:
        """Return whether the component is healthy and the JSON ``/healthz`` answers."""
        age = self.age()
        problem = self.check() if self.check is not None else None
        if problem is None and age >= self.stale_after:
            problem = f"work loop stuck: no round for {age:.0f}s"
        body: dict[str, Any] = {
            "ok": problem is None,
            "state": self.state,
            "seconds_since_beat": round(age, 3),
        }
        if problem is not None:
            body["problem"] = problem
        return problem is None, body


def parse_addr(value: str, *, setting: str) -> tuple[str, int] | None:
    """Return ``(host, port)`` of a ``host:port`` setting, or None for ``off`` (or empty).

    ``[::1]:9463`` gives ``("::1", 9463)``; port 0 means any free port. Raises
    :class:`ConfigError` naming ``setting`` when the value is neither.
    """
    text = value.strip()
    if text.lower() in (OFF, ""):
        return None
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{setting} must be host:port or {OFF!r}: {value!r}")
    return host, int(port)


def observe_app(
    heartbeat: Heartbeat, registry: CollectorRegistry = REGISTRY, *, metrics: bool = True
) -> web.Application:
    """Return an application serving ``/healthz`` (and ``/metrics`` of ``registry``)."""

    async def healthz(_request: web.Request) -> web.Response:
        ok, body = heartbeat.report()
        return web.json_response(body, status=200 if ok else 503)

    async def metrics_page(_request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    if metrics:
        app.router.add_get("/metrics", metrics_page)
    return app


@dataclass(slots=True)
class Served:
    """A running observe server: where it listens, and how to stop it."""

    host: str
    port: int
    _loop: asyncio.AbstractEventLoop
    _thread: threading.Thread
    _stop: asyncio.Event

    def close(self, timeout: float = 5.0) -> None:
        """Stop the server and wait (up to ``timeout`` seconds) for its thread."""
        with contextlib.suppress(RuntimeError):  # its loop already closed
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)


def serve_in_thread(
    addr: tuple[str, int],
    heartbeat: Heartbeat,
    registry: CollectorRegistry = REGISTRY,
    *,
    name: str = "observe",
) -> Served:
    """Serve :func:`observe_app` on ``addr`` from a daemon thread; return once it listens.

    Raises :class:`ConfigError` when the address cannot be bound (in use, not local):
    a component whose probes cannot be reached would look dead to its supervisor.
    """
    ready: dict[str, Any] = {}
    started = threading.Event()

    async def main() -> None:
        stop = asyncio.Event()
        runner = make_runner(observe_app(heartbeat, registry), _DEADLINES)
        await runner.setup()
        try:
            server = await listen(runner, addr[0], addr[1], _DEADLINES)
        except OSError as e:
            await runner.cleanup()
            ready["error"] = e
            started.set()
            return
        sock = server.sockets[0].getsockname()
        ready.update(port=int(sock[1]), loop=asyncio.get_running_loop(), stop=stop)
        started.set()
        try:
            await stop.wait()
        finally:
            server.close()
            await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name=name, daemon=True)
    thread.start()
    started.wait()
    if "error" in ready:
        thread.join(5.0)
        raise ConfigError(
            f"cannot serve /metrics and /healthz on {addr[0]}:{addr[1]}: {ready['error']}"
        )
    log.info("%s: /metrics and /healthz on http://%s:%d", name, addr[0], ready["port"])
    return Served(addr[0], ready["port"], ready["loop"], thread, ready["stop"])


def start_observer(
    configured: str | None,
    *,
    default: str,
    setting: str,
    heartbeat: Heartbeat,
    registry: CollectorRegistry = REGISTRY,
    name: str = "observe",
) -> Served | None:
    """Start a component's ``/metrics`` and ``/healthz`` as its command was configured.

    ``configured`` is the address the operator gave (the option or ``setting``), None
    when they gave none. A given address that cannot be bound raises
    :class:`ConfigError` (the command exits with it). The built-in ``default`` is
    softer: several components of one kind on one host (tests, a second worker) would
    otherwise stop each other, so when it is taken the component logs an error naming
    ``setting`` and runs without the server. Returns None when the server is off.
    """
    addr = parse_addr(default if configured is None else configured, setting=setting)
    if addr is None:
        log.info("%s: /metrics and /healthz off (%s=%s)", name, setting, OFF)
        return None
    try:
        return serve_in_thread(addr, heartbeat, registry, name=name)
    except ConfigError as e:
        if configured is not None:
            raise
        failure = e
    log.error("%s: %s; running without them (set %s to another host:port)", name, failure, setting)
    return None
