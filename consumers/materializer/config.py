"""Tuning knobs of the materializer (batch size, flush interval, backoff)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchConfig:
    """How records are grouped into Postgres transactions and how failures back off.

    A batch is flushed when it holds ``max_records`` records, when its record values add
    up to ``max_bytes`` (checked after each poll, so a batch may pass it by one poll's
    records), or ``max_wait`` seconds after its first record arrived, whichever comes
    first. Defaults are the measured sweet spot of tests/bench/bench_materializer.py
    (see docs/materializer.md).
    """

    # Each batch rewrites every conversation it touches once: the larger the batch, the
    # fewer rewrites per event (200,000 events over 20,000 conversations: 10,000 ->
    # 14,198 events/s, 30,000 -> 19,761). Two batches are in memory at a time (one
    # written, one gathered): ~0.6 KB per record of the bench's ~280-byte events each
    # (the decoded row; the Kafka message is not kept).
    max_records: int = 30000
    # Bounds memory for large records: 16 MiB of values (~56,000 bench events, ~10,000
    # of 1.6 KB) flushes a batch before max_records does.
    max_bytes: int = 16 * 1024 * 1024
    max_wait: float = 0.02
    # Postgres connections that write one batch in parallel, each a share of its
    # partitions in its own transaction (store.Store).
    writers: int = 2
    backoff_initial: float = 0.2
    backoff_max: float = 5.0
    # How long one poll waits when nothing is buffered (bounds the reaction to stop()).
    idle_poll: float = 0.5
    # How long one poll waits while the writer thread is busy (how soon a finished
    # write is noticed and the next batch handed over).
    busy_poll: float = 0.005
    # Seconds between lag gauge refreshes (only with metrics on).
    lag_interval: float = 10.0

    def __post_init__(self) -> None:
        if self.max_records < 1:
            raise ValueError("max_records must be >= 1")
        if self.max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self.writers < 1:
            raise ValueError("writers must be >= 1")
        if self.max_wait < 0 or min(self.busy_poll, self.backoff_initial, self.backoff_max) <= 0:
            raise ValueError("durations must be positive")
