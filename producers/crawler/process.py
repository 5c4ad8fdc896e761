"""The ``convsync crawler`` process: a :class:`CrawlWorker` at a time, made anew after its
consumer died, with the process's reconciler and metrics listener beside it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from convsync.errors import ConsumerFatalError
from convsync.settings import Settings
from producers.crawler.app_usage import AppLimiter
from producers.crawler.config import CrawlerSettings
from producers.crawler.reconcile import ReconcileSettings
from producers.crawler.worker import CrawlWorker

log = logging.getLogger(__name__)


def run_worker(
    settings: Settings,
    crawler: CrawlerSettings,
    *,
    metrics_addr: str | None = None,
    reconcile: ReconcileSettings | None = None,
    **kwargs: Any,
) -> None:
    """Run a worker until SIGINT/SIGTERM (the ``convsync crawler`` command), with the
    process's reconciler and metrics listener beside it (``ops.process_services``)."""
    import signal

    from producers.crawler.ops import process_services

    async def main() -> bool:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        clean = True
        # One app limiter for the process: it outlives a worker restarted below.
        limiter = AppLimiter(crawler)
        current: list[CrawlWorker] = []
        async with process_services(
            settings,
            limiter=limiter,
            tokens=kwargs.get("page_tokens") or settings.page_tokens,
            stats=lambda: current[0].stats if current else None,
            partitions=lambda: current[0].assigned_partitions if current else 0,
            reconnect=lambda: current[0].needing_reconnect if current else None,
            stop=stop,
            metrics_addr=metrics_addr,
            reconcile=reconcile,
            crawler=crawler,
            graph_url=kwargs.get("graph_url"),
        ):
            while True:
                worker = CrawlWorker(settings, crawler, app_limiter=limiter, **kwargs)
                current[:] = [worker]
                try:
                    await worker.run(stop)
                except ConsumerFatalError as e:
                    current.clear()
                    # An abandoned close of the dead consumer would block the exit later.
                    clean = clean and worker.closed_cleanly
                    if stop.is_set():
                        return clean
                    # A fenced or otherwise dead consumer: what it had not committed is
                    # run again by the next owner, most likely this process again.
                    log.warning("%s; rejoining the group with a new consumer in %.0fs", e, 1.0)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)
                    continue
                return clean and worker.closed_cleanly

    if not asyncio.run(main()):
        # A consumer whose close() was abandoned would block the interpreter's exit in
        # librdkafka's destructor; everything durable is already durable.
        logging.shutdown()
        os._exit(0)
