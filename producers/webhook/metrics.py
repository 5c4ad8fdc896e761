"""The gateway's Prometheus metrics: plain counters on the hot path, exposed on demand.

Counting is a dict or list increment. ``prometheus_client``'s metric objects take a lock
and walk their children on every update; in the gateway that cost ~10 us of the event
loop per request (five updates), against ~1 us now (measured in docs/gateway.md). The
Prometheus text is built from the counts only when ``/metrics`` is scraped; that page
(:func:`metrics_page`) is served on the gateway's private listener, not the webhook port.

With ``--workers N`` the command sets ``CONVSYNC_GATEWAY_METRICS_DIR``: every worker writes
its counts there every second (and when it stops), and any worker's ``/metrics`` reports
its own live counts plus the other workers' latest files, so each worker's share is at
most a second old.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Final

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)

SHARED_DIR_ENV: Final = "CONVSYNC_GATEWAY_METRICS_DIR"
# Distinct ignored entry[] field names counted by name; more are counted as "other".
# Field names come from the bodies, so without a bound each new one was a label (a
# series) kept for the life of the process.
MAX_IGNORED_FIELDS: Final = 50
OTHER_FIELD: Final = "other"
_BODY_BUCKETS: Final[tuple[float, ...]] = (256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
_LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)
_LABELLED: Final = (
    # (attribute, metric name, help, label names)
    (
        "requests",
        "convsync_gateway_requests",
        "HTTP requests by route and status.",
        ("route", "status"),
    ),
    (
        "deliveries",
        "convsync_gateway_deliveries",
        "Entries (deliveries) confirmed by Kafka, by platform; the mapper makes the events.",
        ("platform",),
    ),
    (
        "signature_failures",
        "convsync_gateway_signature_failures",
        "POSTs refused for their signature, by reason.",
        ("reason",),
    ),
    (
        "ignored",
        "convsync_gateway_ignored_entry_fields",
        "entry[] fields other than messaging/standby (e.g. feed 'changes'), not events.",
        ("field",),
    ),
)
_HISTOGRAMS: Final = (
    # (attribute, metric name, help, bucket bounds)
    (
        "produce_seconds",
        "convsync_gateway_produce_seconds",
        "Time from produce to Kafka's confirmation of a request's events.",
        _LATENCY_BUCKETS,
    ),
    ("body_bytes", "convsync_gateway_body_bytes", "Size of POST bodies read.", _BODY_BUCKETS),
)


class Histogram:
    """Observations counted per bucket (``le``, Prometheus' cumulative buckets at export)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (a value equal to a bound falls in that bound's bucket)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class Metrics:
    """Counters and histograms of one gateway process."""

    def __init__(self, shared_dir: Path | None = None) -> None:
        if shared_dir is None and os.environ.get(SHARED_DIR_ENV):
            shared_dir = Path(os.environ[SHARED_DIR_ENV])
        self.shared_dir = shared_dir
        # One file per Metrics (per worker process): its pid and a nonce.
        self._file = f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        # Label values as tuples -> count. Keys of requests, events and signature
        # failures come from fixed sets; ignored fields are bounded (MAX_IGNORED_FIELDS).
        self.requests: dict[tuple[str, ...], int] = {}
        self.deliveries: dict[tuple[str, ...], int] = {}
        self.signature_failures: dict[tuple[str, ...], int] = {}
        self.ignored: dict[tuple[str, ...], int] = {}
        self.produce_seconds = Histogram(_LATENCY_BUCKETS)
        self.body_bytes = Histogram(_BODY_BUCKETS)

    def count_request(self, route: str, status: int) -> None:
        """Count one answered request."""
        key = (route, str(status))
        self.requests[key] = self.requests.get(key, 0) + 1

    def count_delivery(self, platform: str) -> None:
        """Count one delivery (an entry) confirmed by Kafka."""
        key = (platform,)
        self.deliveries[key] = self.deliveries.get(key, 0) + 1

    def count_signature_failure(self, reason: str) -> None:
        """Count one POST refused for its signature."""
        key = (reason,)
        self.signature_failures[key] = self.signature_failures.get(key, 0) + 1

    def count_ignored(self, field: str) -> None:
        """Count one ignored ``entry[]`` field (as "other" past MAX_IGNORED_FIELDS names)."""
        key = (field,)
        if key not in self.ignored and len(self.ignored) >= MAX_IGNORED_FIELDS:
            key = (OTHER_FIELD,)
        self.ignored[key] = self.ignored.get(key, 0) + 1

    # -- export -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Return this process's counts as plain JSON-able data."""
        out: dict[str, Any] = {
            attr: [[*labels, n] for labels, n in getattr(self, attr).items()]
            for attr, *_ in _LABELLED
        }
        for attr, *_ in _HISTOGRAMS:
            h: Histogram = getattr(self, attr)
            out[attr] = {"counts": list(h.counts), "sum": h.sum}
        return out

    def write_snapshot(self) -> None:
        """Write this process's counts to the shared directory (atomically), if there is one."""
        if self.shared_dir is None:
            return
        path = self.shared_dir / self._file
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self.snapshot()))
        tmp.replace(path)

    def _snapshots(self) -> list[dict[str, Any]]:
        """This process's live counts, then every other worker's latest file."""
        snaps = [self.snapshot()]
        if self.shared_dir is None:
            return snaps
        for path in sorted(self.shared_dir.glob("*.json")):
            if path.name == self._file:
                continue
            try:
                snaps.append(orjson.loads(path.read_bytes()))
            except (OSError, orjson.JSONDecodeError) as e:
                # Written by rename, so never half-written; a worker's directory gone
                # with it is the only way here. Its counts are missing from this scrape.
                log.warning("metrics of %s unreadable: %s", path.name, e)
        return snaps

    def render(self) -> bytes:
        """Return the Prometheus exposition text (all workers' counts with ``--workers N``)."""
        registry = CollectorRegistry()
        registry.register(_Export(self._snapshots()))
        return generate_latest(registry)

    async def share_every(self, seconds: float = 1.0) -> None:
        """Write this process's counts to the shared directory every ``seconds``, forever."""
        while True:
            await asyncio.sleep(seconds)
            try:
                self.write_snapshot()
            except OSError as e:
                log.warning("cannot write gateway metrics to %s: %s", self.shared_dir, e)


class _Export:
    """A collector of merged snapshots, in the shapes Prometheus clients expect."""

    def __init__(self, snaps: list[dict[str, Any]]) -> None:
        self._snaps = snaps

    def collect(self) -> Iterator[Metric]:
        for attr, name, doc, labels in _LABELLED:
            merged: dict[tuple[str, ...], int] = {}
            for snap in self._snaps:
                for *values, n in snap.get(attr, []):
                    merged[tuple(values)] = merged.get(tuple(values), 0) + n
            counter = CounterMetricFamily(name, doc, labels=list(labels))
            for values, n in sorted(merged.items()):
                counter.add_metric(list(values), float(n))
            yield counter
        for attr, name, doc, bounds in _HISTOGRAMS:
            counts = [0] * (len(bounds) + 1)
            total = 0.0
            for snap in self._snaps:
                part = snap.get(attr)
                if part is None:
                    continue
                counts = [a + b for a, b in zip(counts, part["counts"], strict=True)]
                total += part["sum"]
            cumulative, buckets = 0, []
            for bound, n in zip((*bounds, float("inf")), counts, strict=True):
                cumulative += n
                # The `le` text prometheus_client's own Histogram writes (1.048576e+06...).
                le: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
                buckets.append((le, float(cumulative)))
            hist = HistogramMetricFamily(name, doc)
            hist.add_metric([], buckets, sum_value=total)
            yield hist


@contextlib.asynccontextmanager
async def sharing(metrics: Metrics) -> AsyncIterator[None]:
    """Share ``metrics`` with the other workers while the context is open (no-op alone)."""
    if metrics.shared_dir is None:
        yield
        return
    task = asyncio.get_running_loop().create_task(metrics.share_every())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        metrics.write_snapshot()


def metrics_page(metrics: Metrics) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Return the handler of ``GET /metrics``: the Prometheus text of ``metrics``."""

    async def page(_request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return page
