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

This file is the bench's flow (topics, bodies, interleaved rounds, medians, the report);
the servers are started by ``gateway_servers.py``, the load and the /proc counters are in
``gateway_load.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from convsync.kafka import admin_client, ensure_topics, topic_specs  # noqa: E402
from convsync.settings import Settings  # noqa: E402
from deploy.simulator.webhooks import WebhookSender  # noqa: E402
from deploy.stack import load_info  # noqa: E402
from tests.bench.gateway_load import (  # noqa: E402
    WRK_SCRIPT,
    Latency,
    cpu_seconds,
    fixed_rate,
    idle_seconds,
    loop_cpu_seconds,
    rss_mb,
    run_wrk,
)
from tests.bench.gateway_servers import (  # noqa: E402
    build_baseline,
    start_servers,
    stop_all,
    wait_all,
)

SECRET = "bench-app-secret"


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

    baseline = None
    if args.baseline_ref:
        baseline_dir = args.baseline_dir or tmp / "baseline"
        try:
            baseline_bin, commit = build_baseline(args.baseline_ref, baseline_dir)
        except subprocess.CalledProcessError:
            shutil.rmtree(tmp)
            raise
        baseline = (f"baseline {commit[:7]}", baseline_bin, baseline_dir)
    env = {
        **os.environ,
        "CONVSYNC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CONVSYNC_TOPIC_PREFIX": settings.topic_prefix,
        "CONVSYNC_APP_SECRET": SECRET,
        "CONVSYNC_LOG_LEVEL": "WARNING",
    }
    started = start_servers(args, env, baseline=baseline)
    procs, servers = started.procs, started.order
    results: dict[str, dict[str, float]] = {}
    try:
        wait_all(started)
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
        gw_rss, gw_peak = rss_mb(procs["gateway+kafka"].pid)
        bare_rss, _ = rss_mb(procs["bare aiohttp"].pid)
    finally:
        stop_all(started)
        for fut in admin.delete_topics([s.name for s in specs], operation_timeout=30).values():
            fut.result(timeout=30)
        shutil.rmtree(tmp)

    report(
        args,
        results,
        baseline_name=baseline[0] if baseline else "",
        bodies=len(bodies),
        mean_size=mean_size,
        rss=(gw_rss, gw_peak, bare_rss),
    )


def report(
    args: argparse.Namespace,
    results: dict[str, dict[str, float]],
    *,
    baseline_name: str,
    bodies: int,
    mean_size: float,
    rss: tuple[float, float, float],
) -> None:
    """Print the table of medians, the ratios and the targets; ``rss``: the gateway's
    current and peak resident set and the bare handler's, in MB."""
    gw_rss, gw_peak, bare_rss = rss
    print(f"\nbodies: {bodies} signed, mean {mean_size:.0f} B, 1-3 events each")
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
