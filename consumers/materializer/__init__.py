"""The exactly-once materializer: ``<prefix>.events`` into the Postgres projection."""

from __future__ import annotations

import threading

from consumers.materializer.config import BatchConfig
from consumers.materializer.engine import DEFAULT_GROUP, Materializer, Totals
from consumers.materializer.replay import ReplayResult, checksum, replay
from convsync.settings import Settings

__all__ = [
    "DEFAULT_GROUP",
    "BatchConfig",
    "Materializer",
    "ReplayResult",
    "Totals",
    "checksum",
    "replay",
    "run",
]


def run(
    settings: Settings,
    *,
    group: str = DEFAULT_GROUP,
    stop: threading.Event | None = None,
    config: BatchConfig | None = None,
) -> Totals:
    """Run a materializer group member until ``stop`` is set; return its totals."""
    return Materializer(settings, group=group, config=config).run(stop=stop)
