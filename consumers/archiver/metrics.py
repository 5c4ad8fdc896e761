"""The archiver's Prometheus metrics and its small HTTP server (/metrics, /healthz)."""

from __future__ import annotations

import time
from typing import Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest

from convsync.errors import ConfigError

FILES_STORED: Final = Counter(
    "convsync_archiver_files_stored", "New files written to the media folder."
)
BYTES_STORED: Final = Counter(
    "convsync_archiver_bytes_stored", "Bytes of the new files written to the media folder."
)
ATTACHMENTS: Final = Counter(
    "convsync_archiver_attachments",
    "Attachments settled, by outcome: downloaded (a new file or one already there), "
    "reused (a URL stored before, not fetched again), failed.",
    ["outcome"],
)
ERRORS: Final = Counter(
    "convsync_archiver_errors",
    "Failed tries by reason (transient ones are retried; permanent ones are final).",
    ["reason", "kind"],
)
DOWNLOADS: Final = Counter("convsync_archiver_downloads", "Downloads started.")
RECORDS: Final = Counter(
    "convsync_archiver_records", "Records read from the events topic, by result.", ["result"]
)
QUEUE_DEPTH: Final = Gauge("convsync_archiver_queue_depth", "Attachments waiting to be fetched.")
QUEUE_DUE: Final = Gauge(
    "convsync_archiver_queue_due", "Attachments waiting to be fetched that are due now."
)
IN_FLIGHT: Final = Gauge("convsync_archiver_in_flight", "Downloads running now.")
ACTIVE: Final = Gauge(
    "convsync_archiver_active", "1 while this process holds the schema's archiver lock."
)


class Health:
    """What /healthz reports: the role and when the work loop last went round."""

    def __init__(self, *, stale_after: float = 60.0) -> None:
        self.role = "starting"
        self.last_beat = time.monotonic()
        self.stale_after = stale_after

    def beat(self, role: str) -> None:
        """Record that the loop of ``role`` (active, standby) is alive."""
        self.role = role
        self.last_beat = time.monotonic()

    def ok(self) -> bool:
        """Return whether the loop went round recently."""
        return time.monotonic() - self.last_beat < self.stale_after


async def serve(health: Health, host: str, port: int) -> web.AppRunner:
    """Start the metrics server on ``host:port``; return its runner (cleanup() stops it)."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        status = 200 if health.ok() else 503
        return web.json_response({"role": health.role, "ok": health.ok()}, status=status)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as e:
        await runner.cleanup()
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {e}") from e
    return runner
