"""Tuning knobs of the materializer (batch size, flush interval, backoff)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchConfig:
    """How records are grouped into Postgres transactions and how failures back off.

    A batch is flushed when it holds ``max_records`` records or ``max_wait`` seconds after
    its first record arrived, whichever comes first. Defaults are the measured sweet
    spot of tests/bench/bench_materializer.py (see docs/materializer.md).
    """

    max_records: int = 10000
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
        if self.writers < 1:
            raise ValueError("writers must be >= 1")
        if self.max_wait < 0 or min(self.busy_poll, self.backoff_initial, self.backoff_max) <= 0:
            raise ValueError("durations must be positive")
