"""`convsync import` against the real Kafka and Postgres: one event per message id
whatever its sources, bad lines stop it without losing what came before, a re-run changes
nothing, and memory stays bounded whatever the file's size."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from consumers.materializer import Materializer
from convsync.kafka import read_watermarks
from convsync.settings import Settings
from producers.importer import Importer
from schemas.envelope import Envelope
from tests.consumers.helpers import conversations, produce, stored_rows
from tests.consumers.procs import REPO, settings_env
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema

pytestmark = pytest.mark.integration

T0 = 1_709_294_400_000


def message(i: int, **changes: Any) -> dict[str, Any]:
    return {
        "page": "p1",
        "platform": "messenger",
        "psid": f"u{i % 3}",
        "mid": f"m_{i}",
        "time": T0 + i * 1000 + 123,
        "direction": "inbound" if i % 2 else "outbound",
        "text": f"text {i}",
        **changes,
    }


def write(path: Path, lines: list[dict[str, Any] | bytes]) -> Path:
    path.write_bytes(
        b"".join(x if isinstance(x, bytes) else orjson.dumps(x) + b"\n" for x in lines)
    )
    return path


def convsync_import(settings: Settings, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "import", str(path)],
        cwd=REPO,
        env={**settings_env(settings), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def materialize(settings: Settings) -> None:
    Materializer.from_settings(settings, group=f"mat-{uuid.uuid4().hex[:8]}").run_to_end()


def records_in_topic(settings: Settings) -> int:
    topic = settings.topic("events")
    consumer = Consumer({**settings.kafka_config(), "group.id": "t-count"})
    try:
        return sum(
            hi - lo
            for lo, hi in (
                read_watermarks(consumer, TopicPartition(topic, p), timeout=10)
                for p in range(settings.partitions)
            )
        )
    finally:
        consumer.close()


def webhook_copy(i: int) -> Envelope:
    m = message(i)
    return Envelope.build(
        kind="message", page_id="p1", psid=m["psid"], occurred_at=m["time"], source="webhook",
        raw={"message": {"mid": m["mid"], "text": m["text"]}}, direction=m["direction"],
        mid=m["mid"], text=m["text"],
    )  # fmt: skip


def crawler_copy(i: int) -> Envelope:
    m = message(i)
    # Graph's whole seconds, the thread id, no text past its detail window.
    return Envelope.build(
        kind="message", page_id="p1", psid=m["psid"], occurred_at=m["time"] // 1000 * 1000,
        source="crawler", raw={"id": m["mid"]}, mid=m["mid"], thread_id="t_1",
    )  # fmt: skip


def test_imported_messages_are_one_event_with_their_webhook_and_crawled_copies(
    make_topics: MakeTopics, make_schema: MakeSchema, tmp_path: Path
) -> None:
    settings = make_schema(base=make_topics(partitions=3))
    # Messages 0-7 came by webhook, 8-15 were crawled, 16-23 exist only in the old inbox.
    produce(settings, [webhook_copy(i) for i in range(8)] + [crawler_copy(i) for i in range(8, 16)])
    path = write(tmp_path / "history.jsonl", [message(i) for i in range(12)] + [b"\n"] + [
        message(i) for i in range(12, 24)
    ])  # fmt: skip
    done = convsync_import(settings, path)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "imported 24 messages from 25 lines (1 blank)" in done.stderr + done.stdout
    materialize(settings)

    rows = stored_rows(settings)
    assert len(rows) == 24  # one row per message id, whatever brought it
    by_mid = {r["mid"]: r for r in rows.values()}
    for i in range(24):
        row = by_mid[f"m_{i}"]
        # Meta's own copies keep their source and raw item; the import fills the rest.
        assert row["source"] == ("webhook" if i < 8 else "crawler" if i < 16 else "import"), i
        assert row["text"] == f"text {i}"
        assert row["direction"] == message(i)["direction"]
        assert row["occurred_at"] == message(i)["time"]
    convs = conversations(settings)
    assert sum(c["message_count"] for c in convs.values()) == 24

    # The same file again: more records on the topic, nothing changed in Postgres.
    before_rows, before_convs = stored_rows(settings), conversations(settings)
    again = convsync_import(settings, path)
    assert again.returncode == 0, again.stderr + again.stdout
    assert records_in_topic(settings) == 16 + 24 + 24
    materialize(settings)
    assert stored_rows(settings) == before_rows
    assert conversations(settings) == before_convs  # versions included


def test_a_bad_line_stops_the_import_after_the_lines_before_it_are_durable(
    make_topics: MakeTopics, make_schema: MakeSchema, tmp_path: Path
) -> None:
    settings = make_schema(base=make_topics(partitions=3))
    lines: list[dict[str, Any] | bytes] = [message(i) for i in range(5)]
    lines.insert(3, message(99, time=T0 // 1000))  # seconds, not ms: line 4
    path = write(tmp_path / "history.jsonl", lines)
    done = convsync_import(settings, path)
    out = done.stderr + done.stdout
    assert done.returncode == 1, out
    assert "line 4: time" in out
    assert "lines 1-3 are imported (3 messages)" in out
    assert records_in_topic(settings) == 3  # before the line: durable; after it: nothing

    lines[3] = message(99)  # fixed, and the whole file again
    fixed = convsync_import(settings, write(path, lines))
    assert fixed.returncode == 0, fixed.stderr + fixed.stdout
    materialize(settings)
    assert sorted(r["mid"] for r in stored_rows(settings).values()) == sorted(
        f"m_{i}" for i in (0, 1, 2, 3, 4, 99)
    )


def _peak_kib(settings: Settings, path: Path) -> tuple[int, int]:
    importer = Importer(settings, chunk_records=500)
    tracemalloc.start()
    try:
        with path.open("rb") as stream:
            done = importer.run(stream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return done.messages, peak // 1024


@pytest.mark.slow
def test_memory_does_not_grow_with_the_file(make_topics: MakeTopics, tmp_path: Path) -> None:
    settings = make_topics(partitions=3)
    small = write(tmp_path / "small.jsonl", [message(i, text="x" * 200) for i in range(2_000)])
    large = write(tmp_path / "large.jsonl", [message(i, text="x" * 200) for i in range(20_000)])
    n_small, peak_small = _peak_kib(settings, small)
    n_large, peak_large = _peak_kib(settings, large)
    assert (n_small, n_large) == (2_000, 20_000)
    # Ten times the lines, the same Python memory (a file read whole would be ~10x).
    assert peak_large < 2 * peak_small, (peak_small, peak_large)


def test_meta_copies_after_the_import_change_no_count(
    make_topics: MakeTopics, make_schema: MakeSchema, tmp_path: Path
) -> None:
    settings = make_schema(base=make_topics(partitions=3))
    path = write(tmp_path / "history.jsonl", [message(i) for i in range(12)])
    done = convsync_import(settings, path)
    assert done.returncode == 0, done.stderr + done.stdout
    materialize(settings)
    imported = conversations(settings)
    assert sum(c["message_count"] for c in imported.values()) == 12

    # Later, the webhook brings 0-3 and a crawl brings 4-7: the same events.
    produce(settings, [webhook_copy(i) for i in range(4)] + [crawler_copy(i) for i in range(4, 8)])
    materialize(settings)
    rows = stored_rows(settings)
    assert len(rows) == 12
    by_mid = {r["mid"]: r for r in rows.values()}
    for i in range(12):
        row = by_mid[f"m_{i}"]
        assert row["source"] == ("webhook" if i < 4 else "crawler" if i < 8 else "import"), i
        assert row["text"] == f"text {i}"  # the crawler's copy has none: the import's stays
        assert row["occurred_at"] == message(i)["time"]
    after = conversations(settings)
    assert {k: c["message_count"] for k, c in after.items()} == {
        k: c["message_count"] for k, c in imported.items()
    }
