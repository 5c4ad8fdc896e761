"""Per-page statistics of the change stream: windowed faust tables and their read-outs.

Windows are tumbling minutes of *event time* (``occurred_at``), so a crawled backlog
lands in the minutes it happened in, not the minute it was read. Counts come from
changes, never from raw events, so a duplicate event counts nothing; a message without
a direction counts as neither in nor out. Like every table
here they are changelog-backed; unlike the change records they are at-least-once: a
crash can count the events after the last changelog flush twice (see docs/streams.md).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

import faust
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from schemas.envelope import Envelope
from streams.change import Step
from streams.faust_fixes import queue_changelog
from streams.held import track_partitions

WINDOW_SECONDS: Final = 60.0
RETENTION: Final = timedelta(hours=1)
MAX_SAMPLES: Final = 1000  # response-time samples kept per page and minute

# The event time of the event being counted, read by the windowed tables.
_EVENT_TIME: ContextVar[float] = ContextVar("convsync_streams_event_time")


def _event_time(_event: Any = None) -> float:
    return _EVENT_TIME.get()


def _extend_samples(samples: list[int] | None, values: list[int]) -> list[int]:
    return [*(samples or ()), *values][:MAX_SAMPLES]


@contextmanager
def _at(minute: int) -> Iterator[None]:
    token = _EVENT_TIME.set(float(minute))
    try:
        yield
    finally:
        _EVENT_TIME.reset(token)


@dataclass(frozen=True, slots=True)
class Window:
    """One page's figures for one minute."""

    start: float
    messages_in: int
    messages_out: int
    median_response_ms: float | None
    replies: int


class PageStats:
    """The statistics tables of one app and the functions that fill and read them."""

    def __init__(self, app: faust.App, *, partitions: int) -> None:
        def windowed(name: str, default: type) -> Any:
            table = app.Table(name, default=default, partitions=partitions)
            wrapper: Any = table.tumbling(WINDOW_SECONDS, expires=RETENTION)
            # relative_to() is on the concrete WindowWrapper, not on WindowWrapperT.
            return wrapper.relative_to(_event_time)

        self.messages_in = windowed("stats-messages-in", int)
        self.messages_out = windowed("stats-messages-out", int)
        self.response_ms = windowed("stats-response-ms", list)
        self.needs_reply = app.Table("stats-needs-reply", default=int, partitions=partitions)
        # Changelog records of the batch being written: table -> [(partition, key, value)].
        self.changelog: dict[Any, list[tuple[int, Any, Any]]] = {}
        tables = (
            self.messages_in.table,
            self.messages_out.table,
            self.response_ms.table,
            self.needs_reply,
        )
        for table in tables:
            self._collect_changelog(table)
            track_partitions(table)
        self.events = 0
        self.duplicates = 0
        self.changes: dict[str, int] = {}
        # The batch being counted: (page, minute) -> n / samples; page -> delta.
        self._in: dict[tuple[str, int], int] = {}
        self._out: dict[tuple[str, int], int] = {}
        self._samples: dict[tuple[str, int], list[int]] = {}
        self._waiting: dict[str, int] = {}

    def count(self, result: Step, event: Envelope) -> None:
        """Count one folded event in memory; :meth:`write` stores the batch's counts."""
        self.events += 1
        self.duplicates += result.duplicate
        if not result.emitted:
            return
        for change in result.changes:
            self.changes[change] = self.changes.get(change, 0) + 1
        page = event.page_id
        minute = event.occurred_at // 60_000 * 60
        if (
            event.kind == "message"
            and result.state.conversation.message_count > result.previous.message_count
        ):
            # A message without a direction (the crawler read it without its sender) is
            # neither in nor out: counting it as either would invent a direction. Only a
            # message's first copy counts: a later one moves times, not counts.
            if event.direction == "inbound":
                self._in[(page, minute)] = self._in.get((page, minute), 0) + 1
            elif event.direction == "outbound":
                self._out[(page, minute)] = self._out.get((page, minute), 0) + 1
        if "replied" in result.changes and result.previous.last_inbound_at is not None:
            waited = event.occurred_at - result.previous.last_inbound_at
            self._samples.setdefault((page, minute), []).append(waited)
        if "needs_reply" in result.changes:
            self._waiting[page] = self._waiting.get(page, 0) + 1
        if "replied" in result.changes:
            self._waiting[page] = self._waiting.get(page, 0) - 1

    def _collect_changelog(self, table: Any) -> None:
        """Make ``table`` queue its changelog records in :attr:`changelog` (F8 of
        streams/faust_fixes.py); the app sends them with the batch's other changelog
        records, one batch per partition (under exactly_once: into the partition's
        transaction), before the batch is acked. faust's own per-write send took a third
        of the worker's CPU (docs/streams.md, "Speed") and is not awaited."""
        queue_changelog(table, self.changelog.setdefault(table, []))

    def write(self, bind: Callable[[str], None]) -> None:
        """Add the counted batch to the tables, one write per page and minute.

        ``bind(page)`` must make an event of that page the current faust event, so the
        write goes to the changelog partition of the page.
        """
        for tally, table in ((self._in, self.messages_in), (self._out, self.messages_out)):
            for (page, minute), n in tally.items():
                bind(page)
                with _at(minute):
                    table[page] += n
        for (page, minute), samples in self._samples.items():
            bind(page)
            with _at(minute):
                self.response_ms[page].apply(_extend_samples, samples)
        for page, delta in self._waiting.items():
            if delta:
                bind(page)
                self.needs_reply[page] += delta
        self._in, self._out, self._samples, self._waiting = {}, {}, {}, {}

    def windows(self) -> dict[str, list[Window]]:
        """Return every page's minutes held by this worker, oldest first."""
        ins = _by_page(self.messages_in.table.items())
        outs = _by_page(self.messages_out.table.items())
        samples = _by_page(self.response_ms.table.items())
        out: dict[str, list[Window]] = {}
        for page in sorted(set(ins) | set(outs) | set(samples)):
            starts = sorted(
                set(ins.get(page, {})) | set(outs.get(page, {})) | set(samples.get(page, {}))
            )
            rows = []
            for start in starts:
                values: list[int] = samples.get(page, {}).get(start) or []
                rows.append(
                    Window(
                        start=start,
                        messages_in=int(ins.get(page, {}).get(start) or 0),
                        messages_out=int(outs.get(page, {}).get(start) or 0),
                        median_response_ms=float(statistics.median(values)) if values else None,
                        replies=len(values),
                    )
                )
            out[page] = rows
        return out

    def snapshot(self) -> dict[str, Any]:
        """Return the JSON document served at ``/stats/``."""
        windows = self.windows()
        pages: dict[str, Any] = {}
        for page in sorted(set(windows) | {str(k) for k in self.needs_reply}):
            pages[page] = {
                "needs_reply": int(self.needs_reply.get(page) or 0),
                "window_seconds": WINDOW_SECONDS,
                "windows": [
                    {
                        "start": w.start,
                        "messages_in": w.messages_in,
                        "messages_out": w.messages_out,
                        "median_response_ms": w.median_response_ms,
                        "replies": w.replies,
                    }
                    for w in windows.get(page, [])
                ],
            }
        return {
            "events": self.events,
            "duplicates": self.duplicates,
            "changes": dict(sorted(self.changes.items())),
            "pages": pages,
        }


def _by_page(items: Iterable[tuple[Any, Any]]) -> dict[str, dict[float, Any]]:
    out: dict[str, dict[float, Any]] = {}
    for (page, window_range), value in items:
        out.setdefault(str(page), {})[float(window_range[0])] = value
    return out


class StatsCollector(Collector):
    """Prometheus read-out of :class:`PageStats` (latest minute per page)."""

    def __init__(self, stats: PageStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        events = CounterMetricFamily("convsync_streams_events", "Events folded by this worker.")
        events.add_metric([], s.events)
        dups = CounterMetricFamily(
            "convsync_streams_duplicate_events", "Events already folded in: they changed nothing."
        )
        dups.add_metric([], s.duplicates)
        changes = CounterMetricFamily(
            "convsync_streams_changes", "Conversation changes by kind.", labels=["change"]
        )
        for kind, n in sorted(s.changes.items()):
            changes.add_metric([kind], n)
        msgs = GaugeMetricFamily(
            "convsync_streams_page_messages_per_minute",
            "Messages in the page's latest event-time minute.",
            labels=["page", "direction"],
        )
        median = GaugeMetricFamily(
            "convsync_streams_page_response_median_seconds",
            "Median time the page took to answer a waiting user, latest minute with replies.",
            labels=["page"],
        )
        waiting = GaugeMetricFamily(
            "convsync_streams_page_conversations_needing_reply",
            "Conversations whose user wrote after the page's last answer.",
            labels=["page"],
        )
        for page, rows in s.windows().items():
            if rows:
                msgs.add_metric([page, "inbound"], rows[-1].messages_in)
                msgs.add_metric([page, "outbound"], rows[-1].messages_out)
            answered = [w for w in rows if w.median_response_ms is not None]
            if answered and answered[-1].median_response_ms is not None:
                median.add_metric([page], answered[-1].median_response_ms / 1000.0)
        for page, n in sorted((str(k), int(v)) for k, v in s.needs_reply.items()):
            waiting.add_metric([page], n)
        yield from (events, dups, changes, msgs, median, waiting)
