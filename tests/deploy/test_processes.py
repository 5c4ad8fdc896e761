"""deploy.processes: servers killed behind its back are reaped, not reported as running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy import processes
from deploy.processes import pid_alive, reap_exited, spawn, stop_pid
from tests.fixtures.stack import REPO


def _wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"process {pid} did not die"
        time.sleep(0.05)


def test_a_server_killed_without_stop_pid_is_reaped(tmp_path: Path) -> None:
    killed = spawn(["sleep", "60"], log_file=tmp_path / "a.log", pid_file=tmp_path / "a.pid")
    alive = spawn(["sleep", "60"], log_file=tmp_path / "b.log", pid_file=tmp_path / "b.pid")
    try:
        os.kill(killed, signal.SIGKILL)
        _wait_gone(killed)  # a zombie now: dead, not yet waited for
        assert killed in processes._CHILDREN

        assert reap_exited() == [killed]

        assert killed not in processes._CHILDREN
        assert alive in processes._CHILDREN and pid_alive(alive)
        # Reaped for real: the kernel no longer has a child with that pid to report.
        with pytest.raises(ChildProcessError):
            os.waitpid(killed, os.WNOHANG)
    finally:
        stop_pid(alive)
    assert alive not in processes._CHILDREN


def test_no_still_running_warning_at_exit_for_a_killed_server(tmp_path: Path) -> None:
    # What a fault test does (SIGKILL a broker, then go on); with ResourceWarnings
    # shown, the interpreter's exit must not report the dead server as running.
    script = f"""
import os, signal, time
from pathlib import Path
from deploy.processes import pid_alive, spawn
tmp = Path({str(tmp_path)!r})
pid = spawn(["sleep", "60"], log_file=tmp / "s.log", pid_file=tmp / "s.pid")
os.kill(pid, signal.SIGKILL)
while pid_alive(pid):
    time.sleep(0.05)
print("killed", pid)
"""
    out = subprocess.run(
        [sys.executable, "-W", "always::ResourceWarning", "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.startswith("killed ")
    assert "still running" not in out.stderr, out.stderr
