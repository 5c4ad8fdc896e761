"""Coverage-guided fuzzing (atheris/libFuzzer) of the admission of webhook bodies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.simulator.webhooks import WebhookSender

HARNESS = Path(__file__).with_name("fuzz_admit.py")


def _corpus(directory: Path) -> Path:
    """Seed the fuzzer with real simulator bodies (first byte 1: presented signed)."""
    directory.mkdir()
    for seed in range(12):
        body = WebhookSender("unused", seed=seed).batch(["1", "22"], items_per_page=1 + seed % 3)
        (directory / f"seed{seed}").write_bytes(b"\x01" + body.raw)
    return directory


def _fuzz(corpus: Path, runs: int, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            f"-runs={runs}",
            "-seed=7",
            "-max_len=4096",
            f"-artifact_prefix={corpus.parent}/",
            str(corpus),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
        env={**os.environ, **env},
        check=False,
    )


@pytest.mark.slow
def test_fuzzed_bodies_are_refused_or_admitted_whole(tmp_path: Path) -> None:
    done = _fuzz(_corpus(tmp_path / "corpus"), 30_000)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Done 30000 runs" in done.stdout


def test_the_harness_reports_a_broken_rule(tmp_path: Path) -> None:
    # The same harness with one rule broken on purpose must crash, or the test above
    # could pass without checking anything.
    done = _fuzz(_corpus(tmp_path / "corpus"), 1_000, CONVSYNC_FUZZ_SELFCHECK="1")
    assert done.returncode != 0
    assert "selfcheck: every accepted body with events is a crash" in done.stdout
    assert list(tmp_path.glob("crash-*")), "libFuzzer keeps the input that broke the rule"
