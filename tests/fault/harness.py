"""End-to-end harness of the fault suite: settle, compare, results.

The scenarios import everything from here. This module holds waiting until the mapper
and materializer caught up (:func:`wait_caught_up`, :class:`Progress` for recovery
times), comparing Postgres with the truth (:func:`check`, :func:`assert_exact`), log
scans for secrets, reading a topic back (:func:`read_topic`) and the scenario results
(:func:`write_result`, figures). The webhook traffic and its truth are in
:mod:`tests.fault.traffic`, the components' processes and the suite's secrets in
:mod:`tests.fault.pipeline`; their names are re-exported here.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import Message, TopicPartition
from psycopg import sql
from pydantic import SecretStr

from admin.status import watermarks
from cli.demo import Comparison, compare
from convsync.db import connect
from convsync.errors import ConvsyncError
from convsync.kafka import make_consumer
from convsync.settings import Settings
from tests.fault.pipeline import (
    ADMIN_TOKEN,
    REPO,
    SECRET,
    SECRETS_SEEN,
    VERIFY_TOKEN,
    Pipeline,
    rss_kb,
)
from tests.fault.settle import mapper_lag, unread_events
from tests.fault.traffic import (
    Body,
    Load,
    Truth,
    crawl_and_webhook_truth,
    make_bodies,
    post_once,
    truth_of,
)

__all__ = [
    "ADMIN_TOKEN",
    "REPO",
    "SECRET",
    "SECRETS_SEEN",
    "VERIFY_TOKEN",
    "Body",
    "Load",
    "Pipeline",
    "Progress",
    "Truth",
    "assert_exact",
    "check",
    "committed",
    "comparison_figures",
    "crawl_and_webhook_truth",
    "dlq_count",
    "high_watermark",
    "load_figures",
    "make_bodies",
    "post_once",
    "read_topic",
    "results_dir",
    "rss_kb",
    "scan_secrets",
    "truth_of",
    "wait_caught_up",
    "with_secret",
    "write_result",
]


# --- settle and compare -----------------------------------------------------------------
def committed(settings: Settings, group: str) -> int:
    """Sum of the materializer's stored next offsets on the events topic."""
    with connect(settings) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT coalesce(sum(next_offset), 0) FROM {}.consumer_offsets"
                ' WHERE "group" = %s AND topic = %s'
            ).format(sql.Identifier(settings.db_schema)),
            (group, settings.topic("events")),
        ).fetchone()
    return int(str(row[0])) if row else 0


def high_watermark(settings: Settings, suffix: str = "events") -> int:
    topic = settings.topic(suffix)
    return sum(hi for _, hi in watermarks(settings, [topic]).get(topic, {}).values())


def wait_caught_up(settings: Settings, group: str, *, timeout: float) -> float:
    """Wait until the mapper mapped every delivery and the materializer stored every
    event; return seconds."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        try:
            target = mapper_lag(settings)
            if target == 0 and unread_events(settings, group) == 0:
                return time.monotonic() - start
        except (ConvsyncError, OSError) as e:
            last = str(e)
        else:
            last = f"mapper {target} deliveries behind"
        if time.monotonic() > deadline:
            raise AssertionError(f"mapper or materializer not caught up in {timeout:.0f}s ({last})")
        time.sleep(0.5)


class Progress(threading.Thread):
    """Samples (time, topic high watermark, stored offsets) to measure recovery times."""

    def __init__(self, settings: Settings, group: str, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.settings, self.group, self.every = settings, group, every
        self.samples: list[tuple[float, int | None, int | None]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.every):
            hw: int | None
            done: int | None
            try:
                hw = high_watermark(self.settings)
            except (ConvsyncError, OSError):
                hw = None
            try:
                done = committed(self.settings, self.group)
            except (ConvsyncError, OSError, Exception):  # noqa: BLE001 - Postgres down is a sample
                done = None
            self.samples.append((time.monotonic(), hw, done))

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def recovery(self, fault_end: float) -> float | None:
        """Seconds from ``fault_end`` until the stored offsets reached the high watermark
        seen at ``fault_end`` (None if never seen)."""
        target = next((hw for t, hw, _ in self.samples if t >= fault_end and hw is not None), None)
        if target is None:
            return None
        # The mapper's commit markers: at most one offset per partition no one reads.
        target -= self.settings.partitions
        for t, _, done in self.samples:
            if t >= fault_end and done is not None and done >= target:
                return round(t - fault_end, 2)
        return None


def dlq_count(settings: Settings) -> int:
    topic = settings.topic("dlq")
    return sum(hi - lo for lo, hi in watermarks(settings, [topic]).get(topic, {}).values())


def check(settings: Settings, truth: Truth) -> Comparison:
    return compare(settings, truth.messages, truth.reads, truth.guests)


def assert_exact(result: Comparison) -> None:
    """Postgres equals the truth: every message once, every conversation exact."""
    assert result.ok, result


def scan_secrets(paths: Iterable[Path], secrets: Sequence[str]) -> tuple[int, int, list[str]]:
    """Return (files, lines, hits) for ``secrets`` in ``paths`` (hits name file and secret)."""
    files = lines = 0
    hits: list[str] = []
    wanted = [s for s in secrets if s]
    for path in paths:
        files += 1
        text = path.read_text(errors="replace")
        lines += text.count("\n")
        for s in wanted:
            if s in text:
                hits.append(f"{path.name}: a secret of length {len(s)}")
    return files, lines, hits


def with_secret(settings: Settings) -> Settings:
    return settings.model_copy(update={"app_secret": SecretStr(SECRET)})


# --- results ----------------------------------------------------------------------------
@functools.cache
def results_dir() -> Path:
    """Where this session's scenario results go: ``CONVSYNC_FAULT_RESULTS``, else a fresh
    temporary folder made on first use; never the tracked tree (``python -m
    tests.fault.report --run`` is what updates the committed report)."""
    chosen = os.environ.get("CONVSYNC_FAULT_RESULTS")
    return Path(chosen) if chosen else Path(tempfile.mkdtemp(prefix="convsync-fault-results-"))


def comparison_figures(result: Comparison) -> dict[str, Any]:
    return {
        "messages expected": result.expected_messages,
        "messages stored": result.stored_messages,
        "lost (missing)": result.missing,
        "unexpected": result.unexpected,
        "duplicates": result.duplicates,
        "conversations expected / stored": (
            f"{result.conversations_expected} / {result.conversations_stored}"
        ),
        "Instagram / guest conversations stored": (
            f"{result.instagram_conversations} / {result.guest_conversations}"
        ),
        "conversation row mismatches": result.count_mismatches
        + result.watermark_mismatches
        + result.conversation_set_mismatches,
        "postgres equals truth": result.ok,
    }


def load_figures(load: Load) -> dict[str, Any]:
    return {
        "webhook bodies": len(load.bodies),
        "events sent (items)": sum(b.items for b in load.bodies),
        "POSTs (with retries)": load.posts,
        "answers": dict(sorted((str(k), v) for k, v in load.statuses.items())),
        "bodies acknowledged (200)": len(load.accepted),
        "events acknowledged": sum(b.items for b in load.accepted),
        "bodies answered non-200 first, then 200 on retry": load.retried_to_200,
        "bodies given up": load.gave_up,
        "achieved rate (bodies/s)": round(
            len(load.bodies) / max(0.001, load.finished - load.started), 1
        ),
    }


def write_result(
    number: int,
    title: str,
    *,
    done: str,
    scale: str,
    figures: dict[str, Any],
    seconds: float,
) -> Path:
    """Write one scenario's figures to ``scenario-<n>.json`` in :func:`results_dir`."""
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"scenario-{number}.json"
    data = {
        "number": number,
        "title": title,
        "done": done,
        "scale": scale,
        "seconds": round(seconds, 1),
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "figures": figures,
    }
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return path


# --- topics ---------------------------------------------------------------------------
def read_topic(settings: Settings, suffix: str, *, timeout: float = 60.0) -> list[Message]:
    """Return every record of ``<prefix>.<suffix>`` (up to the high watermarks now)."""
    topic = settings.topic(suffix)
    marks = watermarks(settings, [topic]).get(topic, {})
    consumer = make_consumer(settings, f"fault-read-{uuid.uuid4().hex[:8]}")
    out: list[Message] = []
    try:
        consumer.assign([TopicPartition(topic, p, lo) for p, (lo, _) in marks.items()])
        left = {p for p, (lo, hi) in marks.items() if hi > lo}
        deadline = time.monotonic() + timeout
        while left:
            if time.monotonic() > deadline:
                raise AssertionError(f"read {len(out)} records of {topic}, partitions {left} left")
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            out.append(msg)
            part, offset = msg.partition(), msg.offset()
            if part is not None and offset is not None and offset + 1 >= marks[part][1]:
                left.discard(part)
    finally:
        consumer.close()
    return out
