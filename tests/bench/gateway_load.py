"""The load and the measurements of bench_gateway.py.

Throughput from Debian's ``wrk`` (closed loop, its Lua script posting the signed bodies);
latency at a fixed rate from an open-loop generator that measures from each request's
*scheduled* time (no coordinated omission); a server's CPU, event-loop CPU and resident
set, and the machine's idle cores, from /proc.

Separate from the bench's flow (``bench_gateway.py``) and from starting the servers
(``gateway_servers.py``): these only load a running server and read counters.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

WRK_SCRIPT = """
local reqs = {}
local n = 0
local i = 0
init = function(args)
  for line in io.lines(args[1]) do
    local tab = string.find(line, "\\t", 1, true)
    local sig = string.sub(line, 1, tab - 1)
    local body = string.sub(line, tab + 1)
    n = n + 1
    reqs[n] = wrk.format("POST", "/webhook",
      {["Content-Type"] = "application/json", ["X-Hub-Signature-256"] = sig}, body)
  end
end
request = function()
  i = i % n + 1
  return reqs[i]
end
"""


def _tree(pid: int) -> list[int]:
    """Return ``pid`` and all its descendants (the workers of ``--workers N``)."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            out.extend(_tree(int(child)))
    return out


def rss_mb(pid: int) -> tuple[float, float]:
    """Return (current, peak) resident set in MB of ``pid`` and its descendants, summed."""
    rss = hwm = 0
    for p in _tree(pid):
        status = Path(f"/proc/{p}/status").read_text()
        rss += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        hwm += int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return rss / 1024, hwm / 1024


def _cpu_ticks(stat: Path) -> int:
    """Return utime + stime from a ``/proc/.../stat`` file."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu_seconds(pid: int) -> float:
    """Return the user+system CPU seconds of ``pid`` and its descendants so far."""
    ticks = sum(_cpu_ticks(Path(f"/proc/{p}/stat")) for p in _tree(pid))
    return ticks / os.sysconf("SC_CLK_TCK")


def loop_cpu_seconds(pid: int) -> float:
    """Return the CPU seconds of the main threads (the event loops) of ``pid``'s tree.

    Without librdkafka's threads: the event loop is the gateway's one serial resource, so
    its CPU per request says whether a run was bound by the loop or by something else.
    """
    ticks = sum(_cpu_ticks(Path(f"/proc/{p}/task/{p}/stat")) for p in _tree(pid))
    return ticks / os.sysconf("SC_CLK_TCK")


def idle_seconds() -> float:
    """Return the machine's idle + iowait CPU seconds so far, over all cores."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, bodies_file: Path, script: Path, *, duration: int, connections: int) -> float:
    """Return requests/s from wrk; fails on any non-2xx answer."""
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "-s",
            str(script),
            url + "/webhook",
            "--",
            str(bodies_file),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


@dataclass
class Latency:
    sent: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    achieved_rate: float


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of the open-loop generator (tiny parser)."""

    def __init__(self, done: Callable[[_Conn, int], None]) -> None:
        self.done = done
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
        if len(self.buf) < end + 4 + length:
            return
        status = int(self.buf[9:12])
        self.buf = self.buf[end + 4 + length :]
        self.done(self, status)


async def fixed_rate(
    port: int, bodies: list[tuple[str, bytes]], *, rate: int, duration: int, connections: int = 64
) -> Latency:
    """Send ``rate`` requests/s open-loop for ``duration`` s; latencies from schedule.

    A request waits for a free connection when all are busy; that wait counts in its
    latency, as it would for Meta.
    """
    loop = asyncio.get_running_loop()
    requests = [
        b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"X-Hub-Signature-256: {sig}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
        for sig, body in bodies
    ]
    total = rate * duration
    latencies: list[float] = []
    errors = 0
    idle: list[_Conn] = []
    waiting: collections.deque[tuple[int, float]] = collections.deque()
    inflight: dict[_Conn, float] = {}
    finished = loop.create_future()

    def send(conn: _Conn, i: int, scheduled: float) -> None:
        inflight[conn] = scheduled
        assert conn.transport is not None
        conn.transport.write(requests[i % len(requests)])

    def done(conn: _Conn, status: int) -> None:
        nonlocal errors
        latencies.append(loop.time() - inflight.pop(conn))
        if status != 200:
            errors += 1
        if waiting:
            send(conn, *waiting.popleft())
        else:
            idle.append(conn)
        if len(latencies) == total and not finished.done():
            finished.set_result(None)

    conns = []
    for _ in range(connections):
        _, proto = await loop.create_connection(lambda: _Conn(done), "127.0.0.1", port)
        conns.append(proto)
    idle.extend(conns)
    start = loop.time() + 0.05
    i = 0
    while i < total:
        now = loop.time()
        while i < total and start + i / rate <= now:
            scheduled = start + i / rate
            if idle:
                send(idle.pop(), i, scheduled)
            else:
                waiting.append((i, scheduled))
            i += 1
        if i < total:
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
    await asyncio.wait_for(finished, 120)
    elapsed = loop.time() - start
    for c in conns:
        assert c.transport is not None
        c.transport.close()
    ms = sorted(x * 1000 for x in latencies)
    return Latency(
        sent=total,
        errors=errors,
        p50_ms=ms[len(ms) // 2],
        p99_ms=ms[int(len(ms) * 0.99)],
        max_ms=ms[-1],
        achieved_rate=total / elapsed,
    )
