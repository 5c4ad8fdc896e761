"""The gateway's Prometheus metrics, in a registry of their own per app."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

_BODY_BUCKETS = (256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """Counters and histograms of one gateway app.

    With ``--workers N`` the command sets ``PROMETHEUS_MULTIPROC_DIR`` and every worker
    writes there, so any worker's ``/metrics`` reports the sum over all of them.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "convsync_gateway_requests",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=r,
        )
        self.events = Counter(
            "convsync_gateway_events", "Events confirmed by Kafka, by kind.", ["kind"], registry=r
        )
        self.produce_seconds = Histogram(
            "convsync_gateway_produce_seconds",
            "Time from produce to Kafka's confirmation of a request's events.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.signature_failures = Counter(
            "convsync_gateway_signature_failures",
            "POSTs refused for their signature, by reason.",
            ["reason"],
            registry=r,
        )
        self.body_bytes = Histogram(
            "convsync_gateway_body_bytes",
            "Size of POST bodies read.",
            buckets=_BODY_BUCKETS,
            registry=r,
        )
        self.ignored = Counter(
            "convsync_gateway_ignored_entry_fields",
            "entry[] fields other than messaging/standby (e.g. feed 'changes'), not events.",
            ["field"],
            registry=r,
        )

        # Label lookups take a lock each; the hot path reuses the children.
        self._request_children: dict[tuple[str, int], Any] = {}
        self._event_children: dict[str, Any] = {}

    def count_request(self, route: str, status: int) -> None:
        """Count one answered request."""
        child = self._request_children.get((route, status))
        if child is None:
            child = self._request_children[route, status] = self.requests.labels(route, str(status))
        child.inc()

    def count_event(self, kind: str) -> None:
        """Count one event confirmed by Kafka."""
        child = self._event_children.get(kind)
        if child is None:
            child = self._event_children[kind] = self.events.labels(kind)
        child.inc()

    def render(self) -> bytes:
        """Return the exposition text of these metrics (all workers' in multiprocess mode)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            merged = CollectorRegistry()
            MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return generate_latest(merged)
        return generate_latest(self.registry)
