"""CPU time and memory of processes from /proc, for the benchmarks' per-event figures.

On a shared two-core machine a side's events/s swings with what else runs; its CPU
seconds per event (its own process, and the Postgres server's when it writes there)
swing much less, so the benchmarks print both.
"""

from __future__ import annotations

import os
from pathlib import Path

from convsync.db import connect
from convsync.settings import Settings

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """Return the user + system CPU seconds process ``pid`` has used so far."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def thread_cpu(pid: int) -> dict[str, float]:
    """Return CPU seconds by thread of ``pid``: ``main`` (the thread the process started
    with), other threads by their name (librdkafka names its own; Python threads show as
    the program's name), summed per name."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = "main" if task.name == str(pid) else (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return out


def peak_rss_mb(pid: int) -> float:
    """Return the peak resident set size of ``pid`` (VmHWM) in MB, NaN once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


class ServerCpu:
    """CPU seconds used by a local Postgres server: the postmaster's live children plus
    what its exited children used (its cutime/cstime). ``None`` when the server is not
    on this machine."""

    def __init__(self, settings: Settings) -> None:
        self.postmaster: int | None = None
        try:
            # The backend serving this connection is a child of the postmaster (the app
            # role may not read the data_directory setting, which names its pid file).
            # Read while the connection is open: the backend exits when it closes.
            with connect(settings) as conn:
                row = conn.execute("SELECT pg_backend_pid()").fetchone()
                if row is not None:
                    self.postmaster = int(_stat(int(str(row[0])))[1])
        except (OSError, ValueError):
            self.postmaster = None

    def seconds(self) -> float | None:
        if self.postmaster is None:
            return None
        pm = self.postmaster
        fields = _stat(pm)
        total = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                child = _stat(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(child[1]) == pm:
                total += int(child[11]) + int(child[12])
        return total / CLOCK_TICKS
