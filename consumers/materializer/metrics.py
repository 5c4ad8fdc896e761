"""What the materializer counts: its Totals and the Prometheus metrics (served on
--metrics-addr), both kept by one Tally, and the heartbeat /healthz reads."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from prometheus_client import Counter, Gauge, Histogram

from convsync.observe import Heartbeat

if TYPE_CHECKING:
    from consumers.materializer.store import BatchResult

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
# Every writer of dead letters (materializer, streams, crawler) shows in one number: the
# DLQ's end offsets, each reported by the member owning the events partition of the same
# number (the topics have as many partitions), refreshed with the lag.
DLQ_END: Final = Gauge(
    "convsync_dlq_end_offset",
    "High watermark of a dead-letter topic partition: records ever written to it.",
    ["topic", "partition"],
)

# The consume loop beats on every round (idle ones too) and on every retry of an outage;
# /healthz reads it. The command replaces it with one of its own staleness (--stale-after).
HEARTBEAT: Heartbeat = Heartbeat()


@dataclass(slots=True)
class Totals:
    """Running counters of one materializer (also exported as Prometheus metrics)."""

    records: int = 0
    inserted: int = 0
    dead_letters: int = 0
    batches: int = 0
    retries: int = 0


class Tally:
    """Counts what one materializer does, in its :class:`Totals` and in the metrics
    labelled by its group."""

    def __init__(self, group: str) -> None:
        self.group = group
        self.totals = Totals()

    def retried(self) -> None:
        """An attempt failed for a passing reason and will be retried."""
        RETRIES.labels(self.group).inc()
        self.totals.retries += 1
        # Retrying an outage is a live loop (/healthz); the lag says it makes no progress.
        HEARTBEAT.beat("retrying")

    def dead_lettered(self) -> None:
        """A record Postgres refused was dead-lettered (decoding poison is counted by
        :meth:`applied`)."""
        self.totals.dead_letters += 1
        DEAD_LETTERS.labels(self.group).inc()

    def applied(self, records: int, good: int, result: BatchResult) -> None:
        """``records`` were committed, ``good`` of them rows, the rest poison: count
        them once, after the commit, so retries do not count twice."""
        dead = records - good
        self.totals.records += records
        self.totals.inserted += result.inserted
        self.totals.dead_letters += dead
        EVENTS_IN.labels(self.group).inc(records)
        EVENTS_INSERTED.labels(self.group).inc(result.inserted)
        CONVERSATION_CHANGES.labels(self.group).inc(result.conversations_changed)
        UPGRADES.labels(self.group).inc(result.upgraded)
        DUPLICATES.labels(self.group).inc(max(0, result.staged - result.inserted))
        DEAD_LETTERS.labels(self.group).inc(dead)

    def committed(self, records: int, seconds: float) -> None:
        """A batch of ``records`` committed ``seconds`` after it went out."""
        BATCH_SIZE.labels(self.group).observe(records)
        BATCH_SECONDS.labels(self.group).observe(seconds)
        self.totals.batches += 1

    def lag(self, topic: str, lags: dict[int, int]) -> None:
        """Set the lag gauge of each partition of ``lags``."""
        for p, n in lags.items():
            LAG.labels(self.group, topic, str(p)).set(n)

    def dlq_ends(self, topic: str, ends: dict[int, int]) -> None:
        """Set the DLQ end-offset gauge of each partition of ``ends``."""
        for p, n in ends.items():
            DLQ_END.labels(topic, str(p)).set(n)

    def forget_lag(self, topic: str, partitions: set[int], dlq_topic: str | None = None) -> None:
        """Remove the lag (and DLQ end) gauges of partitions this member no longer owns."""
        for p in partitions:
            # A gauge that was never set for this partition has nothing to remove.
            with contextlib.suppress(KeyError):
                LAG.remove(self.group, topic, str(p))
            if dlq_topic is not None:
                with contextlib.suppress(KeyError):
                    DLQ_END.remove(dlq_topic, str(p))
