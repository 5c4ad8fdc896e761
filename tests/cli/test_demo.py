"""`convsync demo` end to end (small world): Postgres must match the simulator's truth."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from convsync.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_small_demo_matches_the_truth(stack_settings: Settings) -> None:
    state = os.environ.get("CONVSYNC_STATE_DIR", str(REPO / ".convsync"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "demo",
            "--pages",
            "2",
            "--conversations",
            "60",
            "--webhooks",
            "120",
            "--timeout",
            "240",
            "--state-dir",
            state,
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "MATCH" in out
    assert "duplicates" in out
