"""Benchmark: what the header deadline (``convsync.http.listen``) costs per request.

One run, the same machine: the cheapest aiohttp handler (read a 500-byte body, answer
200) on uvloop, served two ways, (a) ``web.TCPSite`` (plain aiohttp) and (b)
``convsync.http.listen`` (every connection watched for its request headers), with the
same keep-alive. Debian's ``wrk`` (1 thread, 32 keep-alive connections) loads them in
interleaved rounds; each round reports the requests served and the server's CPU time per
request (user + system from /proc, which other load on the machine disturbs far less than
requests per second). Prints the medians and the ratio watched/plain. Then, in this
process, the watch's own bookkeeping per request (a byte received, the handler entered
and left through the hook) against a bare protocol call and a bare handler await: the
number the wrk rounds are too noisy to show on a shared machine.

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

from convsync.http import _Watch, _Watches
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


class _Inner(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        pass


async def bookkeeping(n: int) -> tuple[float, float]:
    """Return (µs per request with the watch, µs without) for ``n`` simulated requests."""
    inner = _Inner()
    watch = _Watch(inner, _Watches(10.0))

    async def handler(request: object) -> object:
        return request

    async def hooked(request: object) -> object:
        watch.started()
        try:
            return await handler(request)
        finally:
            watch.ended()

    began = time.perf_counter()
    for i in range(n):
        inner.data_received(b"x")
        await handler(i)
    bare = time.perf_counter() - began
    began = time.perf_counter()
    for i in range(n):
        watch.data_received(b"x")
        await hooked(i)
    watched = time.perf_counter() - began
    return watched / n * 1e6, bare / n * 1e6


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
    runs = [uvloop.run(bookkeeping(200_000)) for _ in range(5)]
    watched, bare = (statistics.median(r[i] for r in runs) for i in (0, 1))
    print(
        f"in-process, per request: {watched:.2f} us with the watch, {bare:.2f} us without: "
        f"the watch adds {watched - bare:.2f} us"
    )


if __name__ == "__main__":
    main()
