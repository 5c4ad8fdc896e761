"""`readers`: N concurrent readers of the data set for a while, as plain SQL or through the
admin API; prints every request's latency by kind as JSON (one child process per phase
of the load benchmark, so its own CPU is not the orchestrator's).

Each reader is a person at an inbox: it picks a query from the mix, runs it, waits a
random think time (exponential, mean ``--think`` seconds), again. SQL readers are
threads with a connection each (psycopg releases the GIL while it waits); API readers
are tasks of one event loop sharing an HTTP connection pool, as browser tabs would.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import threading
import time
from typing import Any, Final

import aiohttp
import orjson

from admin.cursors import Cursors
from convsync.db import connect
from convsync.settings import Settings
from tests.bench.read_path.catalog import TOKEN, Targets, draw_targets, request, run_sql

# The mix of queries: what an inbox's users do most (read lists and conversations), and
# the dashboard and status now and then.
MIX: Final = {
    "needs_reply_first": 25,
    "needs_reply_deep": 10,
    "messages_last": 25,
    "messages_before": 15,
    "tag": 10,
    "name_prefix": 5,
    "dashboard": 5,
    "status": 5,
}


def add_parser(sub: Any) -> None:
    """Add the (internal) ``readers`` subcommand."""
    p = sub.add_parser("readers", help="(internal) run readers, print latencies as JSON")
    p.add_argument("--mode", choices=("sql", "api"), required=True)
    p.add_argument("--readers", type=int, default=50)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--think", type=float, default=1.0)
    p.add_argument("--base", default="", help="the admin API's URL (api mode)")
    p.set_defaults(run=run)


def _kinds(rng: random.Random) -> str:
    return rng.choices(list(MIX), list(MIX.values()))[0]


def sql_readers(settings: Settings, t: Targets, args: argparse.Namespace) -> dict[str, Any]:
    """Run SQL readers; return latencies (s) by kind and errors."""
    out: dict[str, list[float]] = {k: [] for k in MIX}
    errors: list[str] = []
    lock = threading.Lock()
    cursors = Cursors(TOKEN)
    stop = time.monotonic() + args.seconds

    def reader(i: int) -> None:
        rng = random.Random(i)
        with connect(settings) as conn:
            time.sleep(rng.expovariate(1 / args.think))
            while time.monotonic() < stop:
                kind = _kinds(rng)
                req = request(kind, t, rng, cursors)
                started = time.perf_counter()
                try:
                    run_sql(conn, req)
                except Exception as e:  # noqa: BLE001 - counted and printed, the run goes on
                    with lock:
                        errors.append(f"{kind}: {e}")
                    continue
                took = time.perf_counter() - started
                with lock:
                    out[kind].append(took)
                time.sleep(rng.expovariate(1 / args.think))

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(args.readers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return {"latencies": out, "errors": errors[:20], "error_count": len(errors)}


async def api_readers(settings: Settings, t: Targets, args: argparse.Namespace) -> dict[str, Any]:
    """Run admin API readers (``status`` is the `convsync status` call); return latencies."""
    from admin.status import collect

    out: dict[str, list[float]] = {k: [] for k in MIX}
    errors: list[str] = []
    cursors = Cursors(TOKEN)
    stop = time.monotonic() + args.seconds
    headers = {"Authorization": f"Bearer {TOKEN}"}
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=args.readers)

    async def reader(session: aiohttp.ClientSession, i: int) -> None:
        rng = random.Random(i)
        await asyncio.sleep(rng.expovariate(1 / args.think))
        while time.monotonic() < stop:
            kind = _kinds(rng)
            req = request(kind, t, rng, cursors)
            started = time.perf_counter()
            try:
                if req.path is None:
                    await asyncio.to_thread(collect, settings)
                else:
                    async with session.get(args.base + req.path) as r:
                        await r.read()
                        if r.status != 200:
                            raise RuntimeError(f"HTTP {r.status}")
            except Exception as e:  # noqa: BLE001 - counted and printed, the run goes on
                errors.append(f"{kind}: {e}")
                continue
            out[kind].append(time.perf_counter() - started)
            await asyncio.sleep(rng.expovariate(1 / args.think))

    async with aiohttp.ClientSession(
        headers=headers, timeout=timeout, connector=connector
    ) as session:
        await asyncio.gather(*(reader(session, i) for i in range(args.readers)))
    return {"latencies": out, "errors": errors[:20], "error_count": len(errors)}


def run(settings: Settings, args: argparse.Namespace) -> int:
    """The ``readers`` subcommand: print one JSON object on stdout."""
    settings = settings.model_copy(update={"db_schema": args.schema})
    with connect(settings) as conn:
        t = draw_targets(conn, args.schema)
    started = time.monotonic()
    if args.mode == "sql":
        result = sql_readers(settings, t, args)
    else:
        result = asyncio.run(api_readers(settings, t, args))
    result["seconds"] = time.monotonic() - started
    # This process's CPU (the readers and, in api mode, their HTTP client and the
    # `convsync status` calls): what the readers take of the cores the ingest shares.
    result["cpu_seconds"] = time.process_time()
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0
