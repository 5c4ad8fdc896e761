"""Per-partition bookkeeping of the crawl topic: in-flight offsets and handled steps.

A worker handles several pages of one partition at once, so the offset it may commit
is the lowest one still in flight. Records above it may already be handled; the
``marks`` (per page: crawl id, highest handled seq, finished) travel as the commit's
metadata, so whoever owns the partition next drops those records as duplicates
instead of forking the crawl. Committing the marks with the offset makes them atomic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

import orjson

# Kafka's default offset.metadata.max.bytes is 4096.
MAX_METADATA: Final = 4000


@dataclass(slots=True)
class Mark:
    """The newest handled step of a page's crawl."""

    crawl_id: str
    seq: int
    finished: bool


@dataclass(slots=True)
class PartitionBook:
    """In-flight offsets, the next offset after the highest seen, and the page marks."""

    marks: dict[str, Mark] = field(default_factory=dict)
    in_flight: set[int] = field(default_factory=set)
    high: int | None = None
    dirty: bool = False

    def begin(self, offset: int) -> None:
        """Note that the record at ``offset`` is being handled."""
        self.in_flight.add(offset)
        self.high = max(self.high or 0, offset + 1)

    def finish(self, offset: int) -> None:
        """Note that the record at ``offset`` is handled (its outputs are durable)."""
        self.in_flight.discard(offset)
        self.dirty = True

    def commit_offset(self) -> int | None:
        """Return the offset to commit: the lowest in flight, else the next unseen."""
        if self.in_flight:
            return min(self.in_flight)
        return self.high

    def metadata(self) -> str:
        """Return the marks as commit metadata, dropping finished crawls if too long."""
        marks = dict(self.marks)
        while True:
            text = orjson.dumps(
                {p: [m.crawl_id, m.seq, int(m.finished)] for p, m in marks.items()}
            ).decode()
            finished = [p for p, m in marks.items() if m.finished]
            if len(text) <= MAX_METADATA or not finished:
                return text
            del marks[finished[0]]

    @staticmethod
    def parse_marks(text: str | None) -> dict[str, Mark]:
        """Return the marks stored as commit metadata ({} for none or garbage)."""
        if not text:
            return {}
        try:
            raw = orjson.loads(text)
        except orjson.JSONDecodeError:
            return {}
        if not isinstance(raw, dict):
            return {}
        out = {}
        for page, value in raw.items():
            if isinstance(value, list) and len(value) == 3:
                out[str(page)] = Mark(str(value[0]), int(value[1]), bool(value[2]))
        return out


Decision = Literal["start", "continue", "join", "duplicate", "stale"]


def decide(mark: Mark | None, *, crawl_id: str, seq: int) -> Decision:
    """Return what to do with a crawl record given the page's mark.

    ``"start"`` a new crawl, ``"continue"`` a step, ``"join"`` a request for a page
    whose crawl is running, ``"duplicate"`` a step already handled, ``"stale"`` a step
    of a crawl that is not the page's current one.
    """
    if mark is None:
        return "start" if seq == 0 else "continue"
    if mark.crawl_id == crawl_id:
        if seq <= mark.seq or mark.finished:
            return "duplicate"
        return "continue"
    if not mark.finished:
        return "join" if seq == 0 else "stale"
    return "start" if seq == 0 else "stale"
