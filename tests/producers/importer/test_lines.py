"""The import format: each bad line named by its number, good lines read into envelopes."""

from __future__ import annotations

import functools
import io
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from producers.importer import ImportLineError, check_file, envelope_of, read_lines
from producers.importer.lines import Read
from schemas.event_id import make_event_id
from tests.consumers.procs import REPO

GOOD = {
    "page": "p1",
    "platform": "messenger",
    "psid": "u1",
    "mid": "m_1",
    "time": 1709294400123,
    "direction": "inbound",
    "text": "hello",
}


def line(**changes: object) -> bytes:
    return orjson.dumps({**GOOD, **changes}) + b"\n"


def test_a_line_is_a_message_whose_id_is_the_rule_of_its_mid() -> None:
    e = envelope_of(
        {**GOOD, "attachments": [{"type": "image", "url": "https://x.fbcdn.net/a.jpg"}]}
    )
    assert e.event_id == make_event_id("message", "p1", "u1", mid="m_1")
    assert (e.kind, e.source, e.direction, e.text, e.occurred_at) == (
        "message", "import", "inbound", "hello", 1709294400123,
    )  # fmt: skip
    assert e.attrs == {"attachments": [{"type": "image", "url": "https://x.fbcdn.net/a.jpg"}]}
    assert e.raw["platform"] == "messenger"


def test_iso_times_need_an_offset() -> None:
    assert envelope_of({**GOOD, "time": "2024-03-01T12:00:00.123Z"}).occurred_at == 1709294400123
    assert envelope_of({**GOOD, "time": "2024-03-01 13:00:00.123+01:00"}).occurred_at == (
        1709294400123
    )
    with pytest.raises(ValueError, match="no UTC offset"):
        envelope_of({**GOOD, "time": "2024-03-01T12:00:00"})


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"{not json\n", "not JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (line(time=1709294400), "not seconds"),
        (line(direction="sideways"), "direction"),
        (line(platform="whatsapp"), "platform"),
        (line(psid="a b"), "psid"),
        (line(mid=""), "mid"),
        (line(colour="red"), "colour"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "page"}) + b"\n", "page"),
        (line(text="x" * 1_100_000), "longer than"),
    ],
)
def test_a_bad_line_is_named_by_its_number(bad: bytes, reason: str) -> None:
    stream = io.BytesIO(line() + b"\n" + bad + line(mid="m_9"))
    read: list[Read] = []
    with pytest.raises(ImportLineError, match=reason) as err:
        read.extend(read_lines(stream))
    assert err.value.lineno == 3
    assert str(err.value).startswith("line 3: ")
    # The good line and the blank one were yielded before the error.
    assert [(r.lineno, r.envelope is not None) for r in read] == [(1, True), (2, False)]


def test_check_lists_every_bad_line_and_reads_on_after_a_long_one(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        line()
        + line(text="y" * 1_100_000)
        + line(mid="m_2")
        + b"nope\n"
        + line(mid="m_3", time=5)
        + line(mid="m_4")
    )
    lines, bad = check_file(path)
    assert lines == 6
    assert [e.lineno for e in bad] == [2, 4, 5]


def test_the_check_command_lists_bad_lines_and_sends_nothing(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(line() + b"nope\n" + line(mid="m_2") + line(mid="m_3", direction="up"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVSYNC_")}
    argv = [sys.executable, "-m", "cli", "import", "--check", str(path)]
    run = functools.partial(
        subprocess.run, argv, cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    # No Kafka is configured at all: --check only reads the file.
    bad = run(env={**env, "COLUMNS": "200", "CONVSYNC_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    out = bad.stdout + bad.stderr
    assert bad.returncode == 1, out
    assert "line 2: not JSON" in out
    assert "line 4: " in out and "direction" in out
    assert "2 bad line(s) of 4" in out
    path.write_bytes(line() + line(mid="m_2"))
    good = run(env={**env, "COLUMNS": "200", "CONVSYNC_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert good.returncode == 0, good.stdout + good.stderr
    assert "2 lines, all good" in good.stdout + good.stderr
