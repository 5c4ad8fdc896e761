"""Benchmark: the webhook gateway (real local Kafka, durable acks) vs a bare aiohttp 200.

Run from the repository root with the local stack up (`convsync up`)::

    .venv/bin/python tests/bench/bench_gateway.py [--duration 10] [--rate 1000]

Both servers get the same signed bodies. Throughput comes from Debian's ``wrk`` (closed
loop, ``--connections`` connections); latency at a fixed rate comes from an open-loop
Python generator that measures from each request's *scheduled* time, so a stall is not
hidden (no coordinated omission). RSS is the gateway process's resident set after the
runs. Prints a table and the ratio gateway/bare measured in this same run.

``--baseline-ref <commit>`` also runs the gateway of an older commit in the same rounds
(for instance the last one with the native mapper, 57cefc7): the commit is exported into
a temporary folder, installed there with its own build (compiled extensions included) in
a venv of its own, and its ``convsync gateway`` is loaded like the current one.
``--baseline-dir DIR`` keeps that folder to reuse on the next run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from convsync.kafka import admin_client, ensure_topics, topic_specs  # noqa: E402
from convsync.settings import Settings  # noqa: E402
from deploy.ports import free_ports  # noqa: E402
from deploy.simulator.webhooks import WebhookSender  # noqa: E402
from deploy.stack import load_info  # noqa: E402

SECRET = "bench-app-secret"
BARE_SERVER = """
import sys
from aiohttp import web

async def handler(request):
    await request.read()
    return web.Response(text="EVENT_RECEIVED")

app = web.Application(client_max_size=1024 * 1024 + 1)
app.router.add_post("/webhook", handler)
app.router.add_get("/readyz", lambda r: handler(r))
loop = None
if len(sys.argv) > 2:
    import uvloop
    loop = uvloop.new_event_loop()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=loop)
"""
# The gateway with Publisher.publish replaced by a no-op: every other step of a POST
# (read, HMAC, parse, map, serialize, metrics, response) runs as in `convsync gateway`.
# Only for --decompose: it splits the gateway's cost into "Python per request" and "Kafka".
NO_KAFKA_GATEWAY = """
import sys
from producers.webhook.publisher import Publisher

async def publish(self, records):
    return 0.0

Publisher.publish = publish
from convsync.settings import Settings
from producers.webhook.server import serve
from producers.webhook.settings import GatewaySettings

serve(Settings(), GatewaySettings(port=int(sys.argv[1])))
"""
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


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - local http
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    raise TimeoutError(url)


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


def build_baseline(ref: str, where: Path) -> tuple[Path, str]:
    """Export commit ``ref`` into ``where``/src and install it into ``where``/venv.

    Returns the venv's bin folder and the full commit id. A folder already holding that
    commit's build is reused. The install builds the commit as a new user would
    (``pip install``), compiled extensions included.
    """
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    src, venv, stamp = where / "src", where / "venv", where / "built"
    if stamp.exists() and stamp.read_text() == commit:
        return venv / "bin", commit
    shutil.rmtree(where, ignore_errors=True)
    src.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    print(f"building the gateway of {commit[:7]} in {where} (pip install, a minute or two)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(src)], check=True, cwd=where)
    stamp.write_text(commit)
    return venv / "bin", commit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--rate-duration", type=int, default=10)
    parser.add_argument("--bodies", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; medians")
    parser.add_argument(
        "--bare-uvloop", action="store_true", help="also run the bare handler on uvloop"
    )
    parser.add_argument(
        "--decompose",
        action="store_true",
        help="also run the gateway with publishing replaced by a no-op (cost without Kafka)",
    )
    parser.add_argument(
        "--baseline-ref",
        metavar="COMMIT",
        help="also run the gateway of this commit, built in a venv of its own",
    )
    parser.add_argument(
        "--baseline-dir",
        type=Path,
        help="where to build --baseline-ref (kept and reused); default: a temporary folder",
    )
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        help="also run `convsync gateway` from this source tree (e.g. an older commit "
        "extracted with `git archive`, its native mapper built or copied in), same topics",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")

    info = load_info(Path(os.environ.get("CONVSYNC_STATE_DIR", REPO / ".convsync")))
    base = Settings(kafka_bootstrap=info.kafka_bootstrap) if info else Settings()
    settings = base.model_copy(update={"topic_prefix": f"bench{uuid.uuid4().hex[:8]}"})
    admin = admin_client(settings)
    specs = topic_specs(settings)
    ensure_topics(admin, specs)

    sender = WebhookSender(SECRET, seed=1)
    signed = [
        sender.batch([str(100 + i % 10)], items_per_page=1 + i % 3) for i in range(args.bodies)
    ]
    bodies = [(s.headers["X-Hub-Signature-256"], s.raw) for s in signed]
    mean_size = sum(len(b) for _, b in bodies) / len(bodies)
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    bodies_file = tmp / "bodies.tsv"
    bodies_file.write_bytes(b"".join(sig.encode() + b"\t" + raw + b"\n" for sig, raw in bodies))
    script = tmp / "post.lua"
    script.write_text(WRK_SCRIPT)

    baseline_name = ""
    if args.baseline_ref:
        baseline_dir = args.baseline_dir or tmp / "baseline"
        try:
            baseline_bin, commit = build_baseline(args.baseline_ref, baseline_dir)
        except subprocess.CalledProcessError:
            shutil.rmtree(tmp)
            raise
        baseline_name = f"baseline {commit[:7]}"
    bare_port, gw_port = free_ports(), free_ports()
    env = {
        **os.environ,
        "CONVSYNC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CONVSYNC_TOPIC_PREFIX": settings.topic_prefix,
        "CONVSYNC_APP_SECRET": SECRET,
        "CONVSYNC_LOG_LEVEL": "WARNING",
    }
    bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(bare_port)])
    procs = {"bare aiohttp": bare}
    if args.bare_uvloop:
        uv_port = free_ports()
        procs["bare+uvloop"] = subprocess.Popen(
            [sys.executable, "-c", BARE_SERVER, str(uv_port), "uvloop"]
        )
    gateway = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "convsync"),
            "gateway",
            "--port",
            str(gw_port),
            "--workers",
            str(args.workers),
            "--admin-port",
            str(free_ports()),
        ],
        env=env,
        cwd=REPO,
    )
    procs["gateway+kafka"] = gateway
    if args.baseline_ref:
        base_port = free_ports()
        procs[baseline_name] = subprocess.Popen(
            [str(baseline_bin / "convsync"), "gateway", "--port", str(base_port)],
            # Its own code only: nothing of this tree on its path.
            env={k: v for k, v in env.items() if k != "PYTHONPATH"},
            cwd=baseline_dir,
        )
    if args.baseline_tree:
        tree_port = free_ports()
        procs["baseline gw"] = subprocess.Popen(
            [sys.executable, "-m", "cli", "gateway", "--port", str(tree_port)],
            # CONVSYNC_ADMIN_PORT: a tree with the private listener must not take 8081.
            env={**env, "PYTHONPATH": str(args.baseline_tree), "CONVSYNC_ADMIN_PORT": "0"},
            cwd=args.baseline_tree,
        )
    if args.decompose:
        nk_port = free_ports()
        procs["gateway no kafka"] = subprocess.Popen(
            [sys.executable, "-c", NO_KAFKA_GATEWAY, str(nk_port)], env=env, cwd=REPO
        )
    results: dict[str, dict[str, float]] = {}
    try:
        bare_url, gw_url = f"http://127.0.0.1:{bare_port}", f"http://127.0.0.1:{gw_port}"
        wait_ready(bare_url + "/readyz", bare)
        wait_ready(gw_url + "/readyz", gateway)
        servers = [("bare aiohttp", bare_url, bare_port), ("gateway+kafka", gw_url, gw_port)]
        if args.bare_uvloop:
            wait_ready(f"http://127.0.0.1:{uv_port}/readyz", procs["bare+uvloop"])
            servers.insert(1, ("bare+uvloop", f"http://127.0.0.1:{uv_port}", uv_port))
        if args.baseline_ref:
            base_url = f"http://127.0.0.1:{base_port}"
            wait_ready(base_url + "/readyz", procs[baseline_name])
            servers.append((baseline_name, base_url, base_port))
        if args.baseline_tree:
            tree_url = f"http://127.0.0.1:{tree_port}"
            wait_ready(tree_url + "/readyz", procs["baseline gw"])
            servers.append(("baseline gw", tree_url, tree_port))
        if args.decompose:
            nk_url = f"http://127.0.0.1:{nk_port}"
            wait_ready(nk_url + "/readyz", procs["gateway no kafka"])
            servers.append(("gateway no kafka", nk_url, nk_port))
        for _, url, _ in servers:
            run_wrk(url, bodies_file, script, duration=2, connections=args.connections)  # warm-up
        runs: dict[str, list[tuple[float, Latency]]] = {name: [] for name, _, _ in servers}
        cpu_us: dict[str, list[float]] = {name: [] for name, _, _ in servers}
        loop_us: dict[str, list[float]] = {name: [] for name, _, _ in servers}
        idle: dict[str, list[float]] = {name: [] for name, _, _ in servers}
        # Interleaved rounds: a burst of load from elsewhere on the shared machine hits
        # both servers, and the medians are compared.
        for _ in range(args.repeat):
            for name, url, port in servers:
                pid = procs[name].pid
                cpu0, loop0, idle0 = cpu_seconds(pid), loop_cpu_seconds(pid), idle_seconds()
                rps = run_wrk(
                    url, bodies_file, script, duration=args.duration, connections=args.connections
                )
                # CPU per request depends less on the machine's load than req/s does.
                done = rps * args.duration
                cpu_us[name].append((cpu_seconds(pid) - cpu0) / done * 1e6)
                loop_us[name].append((loop_cpu_seconds(pid) - loop0) / done * 1e6)
                # Idle cores during the run: ~0 when the machine is the limit; a loop well
                # under one core with cores idle means the closed loop waited on latency.
                idle[name].append((idle_seconds() - idle0) / args.duration)
                lat = asyncio.run(
                    fixed_rate(port, bodies, rate=args.rate, duration=args.rate_duration)
                )
                runs[name].append((rps, lat))
        for name, rounds in runs.items():
            results[name] = {
                "rps": statistics.median(r for r, _ in rounds),
                "p50": statistics.median(lat.p50_ms for _, lat in rounds),
                "p99": statistics.median(lat.p99_ms for _, lat in rounds),
                "max": max(lat.max_ms for _, lat in rounds),
                "errors": sum(lat.errors for _, lat in rounds),
                "rate": statistics.median(lat.achieved_rate for _, lat in rounds),
                "cpu_us": statistics.median(cpu_us[name]),
                "loop_us": statistics.median(loop_us[name]),
                "idle": statistics.median(idle[name]),
            }
            print(
                f"{name}: req/s per round {[round(r) for r, _ in rounds]}, "
                f"p99 ms per round {[round(lat.p99_ms, 1) for _, lat in rounds]}, "
                f"CPU us/request per round {[round(c) for c in cpu_us[name]]}, "
                f"event loop us/request {[round(c) for c in loop_us[name]]}, "
                f"idle cores {[round(c, 2) for c in idle[name]]}"
            )
        gw_rss, gw_peak = rss_mb(gateway.pid)
        bare_rss, _ = rss_mb(bare.pid)
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=30)
        for fut in admin.delete_topics([s.name for s in specs], operation_timeout=30).values():
            fut.result(timeout=30)
        shutil.rmtree(tmp)

    print(f"\nbodies: {len(bodies)} signed, mean {mean_size:.0f} B, 1-3 events each")
    print(
        f"wrk: 1 thread, {args.connections} connections, {args.duration}s; "
        f"fixed rate {args.rate}/s for {args.rate_duration}s; gateway workers {args.workers}; "
        f"medians of {args.repeat} interleaved rounds (max over all)"
    )
    print(
        f"{'server':<16}{'req/s':>10}{'fixed/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'non-200':>9}{'CPU us/req':>11}{'loop us/req':>12}{'idle cores':>11}"
    )
    for name, r in results.items():
        print(
            f"{name:<16}{r['rps']:>10.0f}{r['rate']:>9.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}"
            f"{r['max']:>9.1f}{r['errors']:>9.0f}{r['cpu_us']:>11.0f}{r['loop_us']:>12.0f}"
            f"{r['idle']:>11.2f}"
        )
    ratio = results["gateway+kafka"]["rps"] / results["bare aiohttp"]["rps"]
    print(f"throughput ratio gateway/bare: {ratio:.2f}  (target >= 0.6)")
    if args.baseline_ref:
        old = results[baseline_name]["rps"]
        print(f"throughput ratio {baseline_name}/bare: {old / results['bare aiohttp']['rps']:.2f}")
        print(
            f"throughput ratio gateway/{baseline_name}: {results['gateway+kafka']['rps'] / old:.2f}"
        )
    if args.baseline_tree:
        old, new = results["baseline gw"], results["gateway+kafka"]
        print(
            f"this gateway / the baseline tree's: req/s {new['rps'] / old['rps']:.2f}, "
            f"event loop us per request {new['loop_us'] / old['loop_us']:.2f}"
        )
    if args.decompose:
        nk = results["gateway no kafka"]["rps"] / results["bare aiohttp"]["rps"]
        print(f"throughput ratio gateway-without-kafka/bare: {nk:.2f}")
    print(f"gateway p99 at {args.rate}/s: {results['gateway+kafka']['p99']:.2f} ms  (target <= 25)")
    print(
        f"gateway RSS (all its processes): {gw_rss:.0f} MB now, {gw_peak:.0f} MB peak "
        "(target <= 150); "
        f"bare RSS {bare_rss:.0f} MB"
    )
    print(
        "note: 2 shared cores; wrk, the load generator, Kafka and other engineers' tests "
        "compete for them, so absolute numbers are noisy."
    )


if __name__ == "__main__":
    main()
