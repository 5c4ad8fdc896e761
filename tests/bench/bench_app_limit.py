"""App-wide rate limit benchmark: two crawler workers, many pages, one app budget.

The fake Graph API enforces an app-wide budget (a bucket of ``--budget`` calls refilled
at ``--rate`` per second, reported in ``X-App-Usage``; a call finding it empty is refused
with code 4). Two workers crawl every page at once. The budget's bound is the least
wall time any client could take for the calls the crawl needed: ``(calls - budget) /
rate``. Printed: wall time, its ratio to that bound (target: within 1.1x), and the calls
the budget refused, for the limiter (``app_usage.AppLimiter``) and for a baseline that
only pauses when refused (the limiter's thresholds at 100 %).

Run: ``.venv/bin/python -m tests.bench.bench_app_limit`` (needs ``convsync up``); about
a minute. Numbers are noisy on a shared machine; the ratios are measured in the same run.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from convsync.db import connect
from deploy.simulator.graph_api import Faults, GraphWorld
from producers.crawler.request import new_request, read_view, submit
from tests.bench.bench_crawler import drop, fresh_settings
from tests.producers.crawler.conftest import FakeGraph, fast_crawler, start_worker


def run(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """Crawl every page with two workers in ``mode``; return the figures."""
    settings = fresh_settings(partitions=4)
    world = GraphWorld.generate(
        seed=61,
        pages=args.pages,
        conversations=args.conversations,
        max_messages=2,
        faults=Faults(app_budget=args.budget, app_rate=args.rate),
    )
    graph = FakeGraph(world, conversations_cap=5, messages_cap=5)
    overrides: dict[str, Any] = {"calls_per_second": 200.0}
    if mode == "reactive":
        overrides.update(app_slow_down_at=100.0, app_hold_at=100.0, app_probe_every=0.001)
    crawler = fast_crawler(**overrides)
    workers = [start_worker(settings, graph, crawler) for _ in range(2)]
    try:
        deadline = time.monotonic() + 60
        # both workers own partitions (else the second one's join rebalances mid-run)
        while not all(w.worker.assigned_partitions for w in workers) or (
            sum(w.worker.assigned_partitions for w in workers) < settings.partitions
        ):
            assert time.monotonic() < deadline, "the workers got no partitions"
            time.sleep(0.05)
        records = [new_request(p, full=True) for p in world.page_ids]
        started = time.monotonic()
        submit(settings, *records)
        with connect(settings) as conn:
            while True:
                views = [read_view(conn, settings.db_schema, r.crawl_id) for r in records]
                if all(v is not None and v.finished for v in views):
                    break
                if time.monotonic() - started > 600:
                    raise AssertionError("crawls not done in 600 s")
                time.sleep(0.05)
        wall = time.monotonic() - started
        failed = [v.crawl_id for v in views if v is not None and v.status != "done"]
    finally:
        for w in workers:
            w.stop()
        graph.stop()
        drop(settings)
    app = world.app_calls
    bound = max(app.served - args.budget, 0) / args.rate
    return {
        "mode": mode,
        "wall": wall,
        "served": app.served,
        "refused": app.throttled,
        "bound": bound,
        "ratio": wall / bound if bound else float("nan"),
        "peak": app.peak_percent,
        "failed": failed,
    }


def main() -> None:
    """Run both modes and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pages", type=int, default=60)
    parser.add_argument("--conversations", type=int, default=20)
    parser.add_argument("--budget", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0)
    args = parser.parse_args()
    # the workers' rebalance and commit warnings are not the figures
    logging.basicConfig(level=logging.ERROR)
    print(
        f"{args.pages} pages x {args.conversations} conversations, 2 workers; app budget "
        f"{args.budget} calls, refilled at {args.rate:g}/s"
    )
    for mode in ("limiter", "reactive"):
        r = run(mode, args)
        print(
            f"{r['mode']:>9}: {r['served']} calls served, {r['refused']} refused (code 4), "
            f"peak usage {r['peak']:.0f} %; wall {r['wall']:.1f} s, bound {r['bound']:.1f} s "
            f"-> ratio {r['ratio']:.3f} (target <= 1.1)"
            + (f"; FAILED crawls {r['failed']}" if r["failed"] else "")
        )


if __name__ == "__main__":
    main()
