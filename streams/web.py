"""The streams worker's web view: ``/healthz``, ``/metrics`` and ``/stats/``.

``/healthz`` follows the fold loop (:class:`convsync.observe.Heartbeat`): the loop beats
after every batch and, while it waits for events, a one-second timer beats for it; a
batch that never finishes (acks that never come) stops the beats. ``/metrics`` adds the
worker's lag on the events topic to the per-page statistics, read from faust's consumer
when scraped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import faust
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from convsync.observe import Heartbeat
from streams.faust_fixes import read_offsets

log = logging.getLogger(__name__)


class LagCollector(Collector):
    """``convsync_streams_lag{group,topic,partition}``: records of each assigned partition
    of ``topic`` past the last one this worker read (faust's consumer, at scrape time)."""

    def __init__(self, app: faust.App, group: str, topic: str) -> None:
        self.app = app
        self.group = group
        self.topic = topic

    def collect(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "convsync_streams_lag",
            "Records of the events partition past the last one this worker read.",
            labels=["group", "topic", "partition"],
        )
        read = read_offsets(self.app)  # F10; None before faust made its consumer
        if read is not None:
            for tp, n in sorted(_lags(*read, self.topic).items()):
                lag.add_metric([self.group, self.topic, str(tp)], n)
        yield lag


def _lags(consumer: Any, offsets: Mapping[Any, int | None], topic: str) -> dict[int, int]:
    # ``offsets``: the offset of the last record read per partition (F10); the high
    # watermark is aiokafka's latest fetch.
    # A partition not fetched or not read yet has no lag to show.
    out: dict[int, int] = {}
    try:
        assigned = consumer.assignment()
    except Exception:  # noqa: BLE001 - no consumer yet (starting, rebalancing)
        return out
    for tp in assigned:
        if tp.topic != topic:
            continue
        read = offsets.get(tp)
        try:
            high = consumer.highwater(tp)
        except Exception as e:  # noqa: BLE001 - an unknown partition (just revoked)
            log.debug("no high watermark of %s: %s", tp, e)
            continue
        if read is not None and high is not None:
            out[tp.partition] = max(0, int(high) - int(read) - 1)
    return out


def add_views(
    app: faust.App,
    *,
    registry: CollectorRegistry,
    health: Heartbeat,
    folding: Callable[[], bool],
    stats: Callable[[], dict[str, Any]],
) -> None:
    """Serve ``/healthz``, ``/stats/`` (``stats()``) and ``/metrics`` (``registry``) on
    the app's web view, and beat ``health`` every second while ``folding()`` is False."""

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def beat_while_waiting() -> None:
        if not folding():
            health.beat("waiting")

    @app.page("/healthz")
    async def healthz_view(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        ok, body = health.report()
        return web.json(body, status=200 if ok else 503)

    @app.page("/stats/")
    async def stats_view(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return web.json(stats())

    @app.page("/metrics")
    async def metrics_view(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return web.bytes(generate_latest(registry), content_type="text/plain; version=0.0.4")
