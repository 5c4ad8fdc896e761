"""The peer benchmarks run end to end at a tiny size and print every comparison.

No figure is asserted (a timed assertion would fail on a busy machine, not on a slow
change): each benchmark must finish, and print its sides and the ratios it exists for.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from convsync.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def run_bench(stack: Settings, module: str, *args: str) -> str:
    """Run ``python -m tests.bench.<module> args``; return its output (fails the test on
    a non-zero exit, with the output)."""
    # The child finds the stack as the fixture did (CONVSYNC_STATE_DIR or ./.convsync).
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVSYNC_BENCH_")}
    done = subprocess.run(
        [sys.executable, "-m", f"tests.bench.{module}", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    return done.stdout


def test_the_materializer_peer_bench_prints_the_three_ratios(stack_settings: Settings) -> None:
    out = run_bench(
        stack_settings, "bench_materializer_peers", "--events", "300", "--conversations", "40",
        "--rounds", "1",
    )  # fmt: skip
    sides = ("(a) convsync materialize", "(b) Quix Streams", "(c) raw COPY", "(d) raw binary")
    for side in sides:
        assert f"round 1 {side}" in out, out
    for peer in ("Quix sink", "raw COPY", "raw binary COPY"):
        assert re.search(rf"^convsync / {peer} +=", out, re.MULTILINE), out
    # The sink wrote one row per distinct event (its content check ran).
    assert "(b) wrote " in out, out


def test_the_streams_peer_bench_prints_the_three_rates(stack_settings: Settings) -> None:
    out = run_bench(stack_settings, "bench_streams", "--events", "150", "--rounds", "1")
    for side in ("plain", "faust", "quix"):
        assert f"round 1 {side}: " in out, out
    assert "faust / quix = " in out, out
    assert "faust / plain = " in out, out


def test_the_many_pages_crawl_bench_prints_the_rate_bound(stack_settings: Settings) -> None:
    out = run_bench(
        stack_settings, "bench_crawler", "--only", "d", "--pages", "4", "--conversations", "3"
    )
    assert "(d) 4 pages at 2 calls/s each, 2 workers: wall " in out, out
    assert "us/message" in out, out


def test_the_read_path_bench_prints_its_queries_and_ratios(stack_settings: Settings) -> None:
    schema = f"rp_smoke_{uuid.uuid4().hex[:8]}"
    try:
        out = run_bench(
            stack_settings, "read_path", "--schema", schema, "generate", "--events", "3000",
            "--pages", "3", "--conversations", "150", "--jobs", "1",
        )  # fmt: skip
        assert "migrations 0008_read_path.sql" in out, out
        assert "B/event" in out, out
        out = run_bench(stack_settings, "read_path", "--schema", schema, "queries", "--n", "3")
        for kind in (
            "needs_reply_first",
            "needs_reply_deep",
            "messages_before",
            "tag",
            "name_prefix",
        ):
            assert f"SQL {kind}" in out and f"API {kind}" in out, out
        assert "CLI status (collect)" in out, out
        out = run_bench(
            stack_settings, "read_path", "--schema", schema, "load", "--readers", "3",
            "--seconds", "3", "--read-seconds", "2", "--rate", "300", "--backlog", "1500",
        )  # fmt: skip
        assert "ingest under read load / alone (ingest + SQL readers) = " in out, out
        assert "drain capacity with SQL readers / alone = " in out, out
        assert "p99 ms by query:" in out, out
        assert "CPU ms/read: readers " in out and ", admin API " in out, out
        for toggle in ("name-index", "dropped-indexes"):
            out = run_bench(
                stack_settings, "read_path", "--schema", schema, "drain", "--rounds", "2",
                "--backlog", "500", "--toggle", toggle,
            )  # fmt: skip
            assert re.search(r"as built / .+ = \d+\.\d\d", out), out
            assert "WAL" in out, out
        out = run_bench(
            stack_settings, "read_path", "--schema", schema, "drain", "--rounds", "1",
            "--warm", "1", "--backlog", "500",
        )  # fmt: skip
        assert "round 1 (warm-up, not counted)" in out, out
        assert "as built: median " in out and "over 1 rounds" in out, out
    finally:
        run_bench(stack_settings, "read_path", "--schema", schema, "drop")


def test_the_cost_bench_prints_growth_per_component(stack_settings: Settings) -> None:
    out = run_bench(stack_settings, "bench_cost", "--sizes", "400,800")
    for component in ("materializer", "streams", "crawler"):
        assert f"{component} " in out and "CPU s per 100k" in out, out
    assert out.count("growth") == 3, out


def test_the_import_bench_prints_memory_and_rate_ratios(stack_settings: Settings) -> None:
    out = run_bench(stack_settings, "bench_import", "--lines", "20")
    for n in (20, 200, 2000):
        assert f"\n{n:>8} " in f"\n{out}", out
    assert out.count(", peak ") == 3 and out.count(", rate ") == 3, out


def test_the_mapper_bench_prints_events_per_second_and_cpu(stack_settings: Settings) -> None:
    out = run_bench(stack_settings, "bench_mapper", "--bodies", "40", "--rounds", "1")
    assert "events/s" in out and "µs/event" in out, out
    assert "map_delivery alone" in out, out


def test_the_contacts_due_bench_times_the_query_and_drops_its_schema(
    stack_settings: Settings,
) -> None:
    out = run_bench(
        stack_settings, "bench_contacts_due", "--conversations", "2000", "--pages", "3",
        "--rounds", "1",
    )  # fmt: skip
    assert "2000 conversations, 3 pages" in out and "query median" in out, out
    assert "Limit" in out, out
