"""Prometheus metrics of the materializer and its heartbeat (served on --metrics-addr)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

from convsync.observe import Heartbeat

EVENTS_IN: Final = Counter(
    "convsync_materializer_events_in", "Records read from the events topic.", ["group"]
)
EVENTS_INSERTED: Final = Counter(
    "convsync_materializer_events_inserted", "Events stored for the first time.", ["group"]
)
DUPLICATES: Final = Counter(
    "convsync_materializer_duplicates", "Records whose event id was already stored.", ["group"]
)
UPGRADES: Final = Counter(
    "convsync_materializer_event_upgrades",
    "Stored events rows changed by a later copy (the webhook's, after the crawler's).",
    ["group"],
)
CONVERSATION_CHANGES: Final = Counter(
    "convsync_materializer_conversation_changes",
    "Conversation rows written; each write bumps that row's version by one.",
    ["group"],
)
DEAD_LETTERS: Final = Counter(
    "convsync_materializer_dead_letters", "Poison records sent to the DLQ.", ["group"]
)
RETRIES: Final = Counter(
    "convsync_materializer_retries", "Batch attempts that failed and were retried.", ["group"]
)
BATCH_SIZE: Final = Histogram(
    "convsync_materializer_batch_size",
    "Records per committed batch.",
    ["group"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000, 20000, 30000),
)
BATCH_SECONDS: Final = Histogram(
    "convsync_materializer_batch_seconds",
    "Seconds to commit one batch to Postgres.",
    ["group"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
LAG: Final = Gauge(
    "convsync_materializer_lag",
    "Records behind the partition's high watermark.",
    ["group", "topic", "partition"],
)

# The consume loop beats on every round (idle ones too); /healthz reads it. The command
# replaces it with one of its own staleness (--stale-after).
HEARTBEAT: Heartbeat = Heartbeat()
