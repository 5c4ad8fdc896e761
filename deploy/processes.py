"""Start, find and stop the long-running local server processes of the stack."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from convsync.errors import StackError

# Servers started by this process. Holding the Popen objects keeps them from being
# garbage-collected while the server runs (a ResourceWarning), and lets stop_pid reap.
# One that died another way (a fault test's SIGKILL, a crash) stays a zombie until
# reap_exited() collects it, at the latest when this process exits.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def pid_alive(pid: int) -> bool:
    """Return True if a process with ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def cmdline(pid: int) -> str:
    """Return the command line of ``pid`` ('' if gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def read_pid(pid_file: Path, marker: str) -> int | None:
    """Return the pid in ``pid_file`` if that process is alive and runs ``marker``."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid_alive(pid) and marker in cmdline(pid):
        return pid
    return None


def reap_exited() -> list[int]:
    """Reap the servers this process started that have exited; return their pids.

    A server killed without :func:`stop_pid` (``os.kill`` in a fault test) or one that
    crashed is a zombie until then; its Popen, collected at interpreter exit, would
    report it as "still running" (a ResourceWarning about a process that is gone).
    """
    # A copy: a test's thread may spawn or stop a server meanwhile.
    gone = [pid for pid, proc in list(_CHILDREN.items()) if proc.poll() is not None]
    for pid in gone:
        _CHILDREN.pop(pid, None)
    return gone


atexit.register(reap_exited)


def spawn(
    argv: Sequence[str], *, log_file: Path, pid_file: Path, env: dict[str, str] | None = None
) -> int:
    """Start ``argv`` detached in its own session, output to ``log_file``; return its pid."""
    reap_exited()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    _CHILDREN[proc.pid] = proc
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def stop_pid(pid: int, *, timeout: float = 30.0, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to ``pid``, wait up to ``timeout`` s, then SIGKILL. Raises StackError."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            _reap(pid)
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise StackError(f"process {pid} survived SIGKILL")
        time.sleep(0.1)
    _reap(pid)


def _reap(pid: int) -> None:
    # Only servers this process started are its children; others are reaped by init.
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        child.wait(timeout=10)
