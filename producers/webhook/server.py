"""Running the gateway: one process, or N worker processes sharing a port (SO_REUSEPORT).

Every process serves two listeners: the public one (the webhook app) and, when the
command gives one, a private one whose application the command builds around the
process's :class:`Metrics` (the admin API, dashboard and metrics, composed in ``cli/``:
this component does not import ``admin/``).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

import uvloop
from aiohttp import web

from convsync.errors import ConfigError
from convsync.gctune import freeze_startup
from convsync.http import listen, make_runner
from convsync.logs import setup_logging
from convsync.settings import Settings
from producers.webhook.app import GATEWAY, make_app, start_runner
from producers.webhook.metrics import SHARED_DIR_ENV, Metrics
from producers.webhook.settings import GatewaySettings

log = logging.getLogger(__name__)


def secrets_of(settings: Settings) -> list[str]:
    """Return the secret values that log lines must never show."""
    return settings.secret_values()


@dataclass(frozen=True, slots=True)
class PrivateListener:
    """A second listener of every gateway process, for what must not face the internet.

    ``make_app`` builds its application from the process's metrics; with ``--workers N``
    it is sent to spawned workers, so it must pickle (a module-level function or a
    ``functools.partial`` of one).
    """

    host: str
    port: int
    make_app: Callable[[Metrics], web.Application]


def serve(
    settings: Settings,
    gateway: GatewaySettings,
    *,
    reuse_port: bool = False,
    private: PrivateListener | None = None,
) -> None:
    """Serve the gateway in this process until SIGINT/SIGTERM (then flush the producer)."""
    metrics = Metrics()
    app = make_app(settings, gateway, metrics=metrics)
    private_app = private.make_app(metrics) if private is not None else None
    if private_app is not None:
        # The same /healthz as the webhook port's, next to /metrics: monitoring reaches
        # every component on one private address (docs/operations.md).
        private_app.router.add_get("/healthz", app[GATEWAY].healthz)

    async def freeze_after_startup(_app: web.Application) -> None:
        # Runs after the app's start-up (the producer is created by then), before the
        # first request. Keeps the collector's full passes off the start-up objects,
        # which otherwise stalled every request in flight for 40-80 ms at a time.
        frozen = freeze_startup()
        log.info(
            "gateway pid %d: %d start-up objects frozen for the collector", os.getpid(), frozen
        )

    app.on_startup.append(freeze_after_startup)
    log.info(
        "gateway pid %d on %s:%d -> %s",
        os.getpid(),
        gateway.host,
        gateway.port,
        settings.topic("deliveries"),
    )
    # uvloop: aiohttp's own request path is half the gateway's CPU on asyncio's loop.
    uvloop.run(_run(app, gateway, reuse_port=reuse_port, private=private, private_app=private_app))


async def _run(
    app: web.Application,
    gateway: GatewaySettings,
    *,
    reuse_port: bool,
    private: PrivateListener | None = None,
    private_app: web.Application | None = None,
) -> None:
    """Serve ``app`` (and ``private_app``) until SIGINT/SIGTERM, then shut down.

    Runners of our own rather than ``web.run_app``: the webhook fast path is installed
    on the runner's server, and the listeners keep HTTP deadlines (``convsync.http``).
    Shutdown stops accepting on both, lets requests in flight finish (up to 60 s), then
    runs the apps' cleanup, which flushes the producer.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    deadlines = gateway.deadlines()
    runners = [await start_runner(app, deadlines)]
    listeners: list[asyncio.Server] = []
    try:
        listeners.append(
            await listen(runners[0], gateway.host, gateway.port, deadlines, reuse_port=reuse_port)
        )
        if private is not None and private_app is not None:
            runners.append(make_runner(private_app, deadlines))
            await runners[-1].setup()
            listeners.append(
                await listen(
                    runners[-1], private.host, private.port, deadlines, reuse_port=reuse_port
                )
            )
            log.info(
                "gateway pid %d: private listener on %s:%d", os.getpid(), private.host, private.port
            )
        await stop.wait()
        log.info("gateway pid %d: signal received, shutting down", os.getpid())
    finally:
        for listener in listeners:
            listener.close()
        for runner in runners:
            await runner.cleanup()


def _worker(
    settings: Settings,
    gateway: GatewaySettings,
    log_level: str,
    private: PrivateListener | None,
) -> None:
    setup_logging(log_level, secrets=secrets_of(settings))
    serve(settings, gateway, reuse_port=True, private=private)


def serve_workers(
    settings: Settings,
    gateway: GatewaySettings,
    *,
    log_level: str = "INFO",
    private: PrivateListener | None = None,
) -> int:
    """Run ``gateway.workers`` processes on one port with SO_REUSEPORT; return an exit code.

    Every worker also serves ``private`` (on its port, with SO_REUSEPORT too). SIGINT/
    SIGTERM to this parent are passed to every worker. A worker that dies makes the
    parent stop the others and return non-zero (a supervisor restarts the whole set).
    Raises :class:`ConfigError` when the app secret is empty.
    """
    if not settings.app_secret.get_secret_value():
        raise ConfigError("CONVSYNC_APP_SECRET is empty: webhooks cannot be verified")
    if gateway.workers == 1:
        serve(settings, gateway, private=private)
        return 0
    metrics_dir = tempfile.mkdtemp(prefix="convsync-gateway-metrics-")
    os.environ[SHARED_DIR_ENV] = metrics_dir
    log.info("%d workers; their metrics in %s", gateway.workers, metrics_dir)
    ctx = multiprocessing.get_context("spawn")
    workers = [
        ctx.Process(
            target=_worker, args=(settings, gateway, log_level, private), name=f"gateway-{i}"
        )
        for i in range(gateway.workers)
    ]

    def forward(signum: int, _frame: FrameType | None) -> None:
        for w in workers:
            if w.pid is not None and w.is_alive():
                os.kill(w.pid, signum)

    # Before the workers start: a signal in between would otherwise kill this parent
    # and orphan them. (Spawned workers start with the default handlers.)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        for w in workers:
            w.start()
        return _supervise(workers, forward)
    finally:
        # The workers' metric files: removed with the process, never left behind.
        try:
            shutil.rmtree(metrics_dir)
        except OSError as e:
            log.warning("cannot remove %s: %s", metrics_dir, e)


def _supervise(
    workers: Sequence[multiprocessing.process.BaseProcess],
    forward: Callable[[int, FrameType | None], None],
) -> int:
    """Wait for every worker; the first that fails stops the others. Returns the exit code."""
    sentinels = {w.sentinel: w for w in workers}
    failed = False
    while sentinels:
        ready = multiprocessing.connection.wait(list(sentinels))
        for s in ready:
            assert isinstance(s, int)
            w = sentinels.pop(s)
            w.join()
            if w.exitcode not in (0, -signal.SIGTERM, -signal.SIGINT) and not failed:
                failed = True
                log.error("worker %s exited with %s; stopping the others", w.name, w.exitcode)
                forward(signal.SIGTERM, None)
    return 1 if failed else 0
