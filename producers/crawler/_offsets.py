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
# Marks kept in memory per partition: a topic anyone can write to may name any number
# of pages (each ends as a finished mark: "failed, no token"). See PartitionBook.set_mark.
MAX_MARKS: Final = 10_000


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
    # While not None: records below this offset were in the log at assignment; they are
    # held until all are read, so that resume_marks sees the newest continuation first.
    replay_end: int | None = None
    held: list[tuple[int, str, bytes | None]] = field(default_factory=list)

    def set_mark(self, page: str, mark: Mark) -> None:
        """Record ``page``'s newest handled step, keeping at most :data:`MAX_MARKS`.

        Past the bound the least recently set finished marks are forgotten, as
        :meth:`metadata` forgets them: a copy of a finished crawl's record read again
        would then run that one step again (its events have the same ids). A running
        crawl's mark is never dropped here; there are no more of them than pages
        crawled at once.
        """
        self.marks.pop(page, None)
        self.marks[page] = mark
        if len(self.marks) > MAX_MARKS:
            # A tenth at a time, so that each set costs O(1) on average.
            excess = len(self.marks) - MAX_MARKS + MAX_MARKS // 10
            for old in [p for p, m in self.marks.items() if m.finished][:excess]:
                del self.marks[old]

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
        """Return the marks as commit metadata, at most ``MAX_METADATA`` characters.

        A partition with more pages than fit (~95 marks) would otherwise have every
        commit refused by the broker (``OFFSET_METADATA_TOO_LARGE``) until enough crawls
        finished. Marks are dropped until the rest fits: finished crawls' first, then
        running ones', oldest first. A running crawl's mark is also proven by the log
        (its next continuation is at or above the committed offset, which is the lowest
        record in flight; see :func:`resume_marks`), so dropping it costs nothing; a
        finished crawl's costs at most its last step again.
        """
        parts = [
            (p, orjson.dumps(p) + b":" + orjson.dumps([m.crawl_id, m.seq, int(m.finished)]))
            for p, m in self.marks.items()
        ]
        size = 2 + sum(len(part) + 1 for _, part in parts) - (1 if parts else 0)
        if size > MAX_METADATA:
            drop: set[str] = set()
            order = [p for p, m in self.marks.items() if m.finished]
            order += [p for p, m in self.marks.items() if not m.finished]
            lengths = dict(parts)
            for page in order:
                if size <= MAX_METADATA:
                    break
                drop.add(page)
                size -= len(lengths[page]) + 1
            parts = [(p, part) for p, part in parts if p not in drop]
        return (b"{" + b",".join(part for _, part in parts) + b"}").decode()

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


@dataclass(frozen=True, slots=True)
class Seen:
    """A crawl record read above the committed offset, before any is handled."""

    offset: int
    page_id: str
    crawl_id: str
    seq: int


def resume_marks(marks: dict[str, Mark], seen: list[Seen]) -> dict[str, Mark]:
    """Return ``marks`` (committed) raised to what the records above the offset prove.

    A continuation (seq >= 1) is produced only once its step's events are confirmed,
    so a page's newest continuation, crawl C at seq M, proves C's steps below M handled;
    and a crawl is started only when the page's previous one is finished. The log, not
    the commit, is then the cursor: a new owner re-runs only the one step that was in
    flight, however far the commits lagged. The committed mark stays when it is newer
    (a crawl with a record after C's last continuation).
    """
    out = dict(marks)
    last: dict[str, Seen] = {}
    for rec in seen:
        if rec.seq >= 1:
            cur = last.get(rec.page_id)
            if cur is None or rec.offset > cur.offset:
                last[rec.page_id] = rec
    for page, rec in last.items():
        mark = out.get(page)
        if mark is not None and mark.crawl_id == rec.crawl_id:
            if mark.seq < rec.seq - 1:
                out[page] = Mark(rec.crawl_id, rec.seq - 1, mark.finished)
            continue
        if mark is not None and any(
            x.page_id == page and x.crawl_id == mark.crawl_id and x.offset > rec.offset
            for x in seen
        ):
            continue
        out[page] = Mark(rec.crawl_id, rec.seq - 1, False)
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
