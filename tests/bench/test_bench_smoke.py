"""The peer benchmarks run end to end at a tiny size and print every comparison.

No figure is asserted (a timed assertion would fail on a busy machine, not on a slow
change): each benchmark must finish, and print its sides and the ratios it exists for.
"""

from __future__ import annotations

import os
import subprocess
import sys
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
        timeout=120,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    return done.stdout


def test_the_materializer_peer_bench_prints_both_ratios(stack_settings: Settings) -> None:
    out = run_bench(
        stack_settings, "bench_materializer_peers", "--events", "300", "--conversations", "40",
        "--rounds", "1",
    )  # fmt: skip
    for side in ("(a) convsync materialize", "(b) Quix Streams", "(c) raw COPY"):
        assert f"round 1 {side}" in out, out
    assert "convsync / Quix sink = " in out, out
    assert "convsync / raw COPY  = " in out, out
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


def test_the_import_bench_prints_memory_and_rate_ratios(stack_settings: Settings) -> None:
    out = run_bench(stack_settings, "bench_import", "--lines", "20")
    for n in (20, 200, 2000):
        assert f"\n{n:>8} " in f"\n{out}", out
    assert out.count(", peak ") == 3 and out.count(", rate ") == 3, out
