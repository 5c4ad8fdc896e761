"""Benchmark: what the header deadline (``convsync.http.listen``) costs per request.

One run, the same machine: the cheapest aiohttp handler (read a 500-byte body, answer
200) on uvloop, served two ways, (a) ``web.TCPSite`` (plain aiohttp) and (b)
``convsync.http.listen`` (every connection watched for its request headers), with the
same keep-alive. Debian's ``wrk`` (1 thread, 32 keep-alive connections) loads them in
interleaved rounds; each round reports the requests served and the server's CPU time per
request (user + system from /proc, which other load on the machine disturbs far less than
requests per second). Prints the medians and the ratio watched/plain. Then the same two
servers and a client in this one process and event loop, in paired rounds: the CPU time
per request of each, and the median of the paired differences, which the machine's
other load disturbs least (the wrk rounds are too noisy to show ~1 µs).

    .venv/bin/python -m tests.bench.bench_deadlines [--rounds 5] [--seconds 4]

The gateway's own figures (``tests/bench/bench_gateway.py``) include the watch.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop
from aiohttp import web

from convsync.http import Deadlines, listen
from deploy.ports import free_ports

REPO = Path(__file__).resolve().parents[2]
SERVER = """
import asyncio, sys
import uvloop
from aiohttp import web
from convsync.http import Deadlines, listen, make_runner

async def handler(request):
    await request.read()
    return web.Response(text="EVENT_RECEIVED")

async def main(port, mode):
    app = web.Application()
    app.router.add_post("/webhook", handler)
    deadlines = Deadlines()
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=deadlines.keepalive)
    await runner.setup()
    if mode == "plain":
        await web.TCPSite(runner, "127.0.0.1", port).start()
    else:
        await listen(runner, "127.0.0.1", port, deadlines)
    await asyncio.Event().wait()

uvloop.run(main(int(sys.argv[1]), sys.argv[2]))
"""
WRK = """
wrk.method = "POST"
wrk.body = string.rep("x", 500)
wrk.headers["Content-Type"] = "application/json"
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 30
    while f":{port:04X} " not in Path("/proc/net/tcp").read_text():
        if time.monotonic() > deadline:
            raise TimeoutError(port)
        time.sleep(0.1)


_REQUEST = (
    b"POST /webhook HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    b"Content-Length: 500\r\n\r\n" + b"x" * 500
)


class _Client(asyncio.Protocol):
    """Sends ``n`` requests one after another on one keep-alive connection."""

    def __init__(self, n: int, done: asyncio.Future[None]) -> None:
        self.n, self.done, self.got = n, done, b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(_REQUEST)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.got += data
        if b"EVENT_RECEIVED" not in self.got:
            return
        assert self.transport is not None
        self.got, self.n = b"", self.n - 1
        if self.n:
            self.transport.write(_REQUEST)
        else:
            self.done.set_result(None)
            self.transport.close()


async def _handler(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(text="EVENT_RECEIVED")


async def in_process(rounds: int, per_connection: int = 3000) -> dict[str, list[float]]:
    """Client and servers in this process and loop: CPU µs per request, paired rounds.

    One loop, so the machine's other load hits both servers alike; the CPU time of this
    process per request (client included) is compared round by round.
    """
    loop = asyncio.get_running_loop()
    ports: dict[str, int] = {}
    for mode in ("plain", "watched"):
        app = web.Application()
        app.router.add_post("/webhook", _handler)
        deadlines = Deadlines()
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=deadlines.keepalive)
        await runner.setup()
        ports[mode] = free_ports()
        if mode == "plain":
            await web.TCPSite(runner, "127.0.0.1", ports[mode]).start()
        else:
            await listen(runner, "127.0.0.1", ports[mode], deadlines)
    out: dict[str, list[float]] = {mode: [] for mode in ports}
    for _ in range(rounds):
        for mode, port in ports.items():
            done = [loop.create_future() for _ in range(8)]
            for fut in done:
                await loop.create_connection(
                    lambda fut=fut: _Client(per_connection, fut), "127.0.0.1", port
                )
            began = time.process_time()
            await asyncio.gather(*done)
            out[mode].append((time.process_time() - began) / (8 * per_connection) * 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=4)
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("needs Debian's wrk (apt-get install wrk)")
    folder = Path(tempfile.mkdtemp(prefix="bench-deadlines-"))
    (folder / "server.py").write_text(SERVER)
    (folder / "post.lua").write_text(WRK)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    servers: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    try:
        for mode in ("plain", "watched"):
            port = free_ports()
            proc = subprocess.Popen(
                [sys.executable, str(folder / "server.py"), str(port), mode], env=env
            )
            servers[mode] = (port, proc)
            wait_listening(port)
        served: dict[str, list[float]] = {m: [] for m in servers}
        cpu_us: dict[str, list[float]] = {m: [] for m in servers}
        for _ in range(args.rounds):
            for mode, (port, proc) in servers.items():
                before = cpu_seconds(proc.pid)
                out = subprocess.run(
                    [
                        wrk,
                        "-t1",
                        "-c32",
                        f"-d{args.seconds}s",
                        "-s",
                        str(folder / "post.lua"),
                        f"http://127.0.0.1:{port}/webhook",
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                used = cpu_seconds(proc.pid) - before
                requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
                served[mode].append(requests / args.seconds)
                cpu_us[mode].append(used / requests * 1e6)
    finally:
        for _, proc in servers.values():
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(folder)
    print(f"{args.rounds} interleaved rounds of {args.seconds} s (wrk -t1 -c32, 500-byte POSTs)")
    print(f"{'server':10} {'req/s median':>13} {'CPU us/request median':>22}")
    for mode in servers:
        print(
            f"{mode:10} {statistics.median(served[mode]):13.0f} "
            f"{statistics.median(cpu_us[mode]):22.1f}"
        )
    rps = statistics.median(served["watched"]) / statistics.median(served["plain"])
    cpu = statistics.median(cpu_us["watched"]) / statistics.median(cpu_us["plain"])
    print(f"watched/plain: req/s {rps:.2f}, CPU per request {cpu:.2f}")
    print("CPU us/request per round:", {m: [round(v, 1) for v in cpu_us[m]] for m in servers})
    paired = uvloop.run(in_process(args.rounds * 2 + 1))
    diffs = [w - p for w, p in zip(paired["watched"], paired["plain"], strict=True)]
    print(
        f"in one process ({len(diffs)} paired rounds of 24,000 requests, client included): "
        f"plain {statistics.median(paired['plain']):.1f} us/request, watched "
        f"{statistics.median(paired['watched']):.1f}; the watch adds "
        f"{statistics.median(diffs):.2f} us (median of the paired differences)"
    )


if __name__ == "__main__":
    main()
