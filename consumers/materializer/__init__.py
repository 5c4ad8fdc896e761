"""The exactly-once materializer: ``<prefix>.events`` into the Postgres projection."""

from __future__ import annotations

import threading

from consumers.materializer.config import DEFAULT_GROUP, BatchConfig, MaterializerConfig
from consumers.materializer.engine import Materializer
from consumers.materializer.metrics import Totals
from consumers.materializer.replay import ReplayResult, checksum, replay

__all__ = [
    "DEFAULT_GROUP",
    "BatchConfig",
    "Materializer",
    "MaterializerConfig",
    "ReplayResult",
    "Totals",
    "checksum",
    "replay",
    "run",
]


def run(config: MaterializerConfig, *, stop: threading.Event | None = None) -> Totals:
    """Run a materializer group member until ``stop`` is set; return its totals."""
    return Materializer(config).run(stop=stop)
