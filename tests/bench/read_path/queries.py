"""`queries`: every read-path query run one at a time (no other load), as plain SQL and
through the admin API, with percentiles; ``--without`` measures the same queries with
some indexes dropped inside a transaction that is rolled back (the "before" of an index,
without building anything), ``--explain`` prints each query's plan.

The two statements the dashboard and `convsync status` ran before this change (a
``count(*)`` per page of the needs-reply conversations; ``count(*)`` of every row and of
the last minute's) are measured too, as ``*_before`` kinds, a few times each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import aiohttp
import psycopg
from psycopg import sql

from admin.cursors import Cursors
from convsync.db import connect
from convsync.settings import Settings
from tests.bench.read_path.catalog import (
    KINDS,
    TOKEN,
    Conn,
    Request,
    draw_targets,
    request,
    run_sql,
)
from tests.bench.read_path.server import AdminServer

BEFORE: Final = {
    # The tag filter before conversation_tag_index: every tagged conversation of the page
    # (GIN on the tags, or the page's rows), joined, sorted.
    "tag_before": (
        "SELECT c.page_id, c.psid, c.last_message_at, t.tags"
        " FROM {s}.conversations AS c JOIN {s}.conversation_tags AS t USING (page_id, psid)"
        " WHERE c.page_id = %(page)s AND t.tags @> ARRAY[%(tag)s::text]"
        " ORDER BY COALESCE(c.last_message_at, '-infinity'::timestamptz) DESC, c.psid DESC"
        " LIMIT 51"
    ),
    # 0004's sync_statistics view: every crawl ever, aggregated per page.
    "statistics_before": (
        "SELECT h.page_id, count(*), count(*) FILTER (WHERE h.status = 'done'),"
        " COALESCE(sum(h.messages_fetched), 0)::bigint,"
        " avg(EXTRACT(EPOCH FROM (h.finished_at - h.started_at)))"
        "   FILTER (WHERE h.status = 'done')::double precision,"
        " (SELECT f.last_error FROM {s}.crawl_history AS f WHERE f.page_id = h.page_id"
        "  AND f.status = 'failed' ORDER BY f.finished_at DESC NULLS LAST LIMIT 1)"
        " FROM {s}.crawl_history AS h GROUP BY h.page_id ORDER BY h.page_id"
    ),
    "dashboard_before": (
        "SELECT page_id, count(*) AS needs_reply FROM {s}.conversations"
        " WHERE needs_reply GROUP BY page_id ORDER BY page_id"
    ),
    "status_before": (
        "SELECT (SELECT count(*) FROM {s}.events),"
        " (SELECT count(*) FROM {s}.conversations),"
        " (SELECT count(*) FROM {s}.events WHERE inserted_at > now() - interval '1 minute')"
    ),
}


def add_parser(sub: Any) -> None:
    """Add the ``queries`` subcommand."""
    p = sub.add_parser("queries", help="each query alone: SQL and admin API percentiles")
    p.add_argument("--n", type=int, default=200, help="runs of each query")
    p.add_argument("--without", default="", help="comma-separated indexes to drop (rolled back)")
    p.add_argument("--explain", action="store_true", help="print each query's plan")
    p.add_argument(
        "--with-sql", default="", help="a file of SQL run first in the rolled-back transaction"
    )
    p.add_argument("--no-api", action="store_true", help="plain SQL only")
    p.add_argument("--kinds", default=",".join(KINDS), help="which queries")
    p.add_argument("--seed", type=int, default=7, help="which long conversations are read")
    p.add_argument(
        "--prepared", action="store_true", help="let psycopg prepare statements (its default)"
    )
    p.set_defaults(run=run)


def percentiles(values: list[float]) -> str:
    """p50 / p95 / p99 / max of seconds, in ms."""
    if not values:
        return "no samples"
    v = sorted(values)

    def at(q: float) -> float:
        return v[min(len(v) - 1, int(q * len(v)))] * 1000

    return (
        f"p50 {at(0.5):7.2f}  p95 {at(0.95):7.2f}  p99 {at(0.99):7.2f}  max {v[-1] * 1000:7.2f} ms"
    )


def time_sql(
    conn: Conn, make: Callable[[], Request], n: int, prepare: bool | None = False
) -> tuple[list[float], float]:
    """Run ``n`` requests; return their seconds and the mean rows."""
    out, rows = [], 0
    for _ in range(n):
        req = make()
        started = time.perf_counter()
        rows += run_sql(conn, req, prepare=prepare)
        out.append(time.perf_counter() - started)
    return out, rows / max(1, n)


def explain(conn: Conn, req: Request) -> str:
    """The plan of a request's first statement, run (EXPLAIN ANALYZE, BUFFERS)."""
    if not req.statements:
        return "(several statements: admin/status.py)"
    stmt, params = req.statements[0]
    plan = conn.execute(
        sql.SQL("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {}").format(stmt), params
    ).fetchall()
    return "\n".join("    " + str(r[0]) for r in plan)


async def time_api(base: str, reqs: list[Request]) -> list[float]:
    """GET each request's path in turn; return the seconds of each."""
    out: list[float] = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        for req in reqs:
            assert req.path is not None
            started = time.perf_counter()
            async with session.get(base + req.path) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{req.path}: {r.status} {await r.text()}")
            out.append(time.perf_counter() - started)
    return out


def run(settings: Settings, args: argparse.Namespace) -> int:
    """The ``queries`` subcommand."""
    schema = args.schema
    kinds = [k for k in args.kinds.split(",") if k]
    rng = random.Random(11)
    cursors = Cursors(TOKEN)
    print(f"load average before: {os.getloadavg()[0]:.1f} (2 cores, shared machine)")
    with connect(settings) as conn:
        started = time.monotonic()
        t = draw_targets(conn, schema, args.seed)
        print(
            f"targets drawn in {time.monotonic() - started:.1f} s: largest page {t.big_page},"
            f" deep page {t.deep_page}, {len(t.long)} conversations of >= 100 messages,"
            f" {len(t.tagged)} (page, tag) pairs"
        )
        dropped = [i for i in args.without.split(",") if i]
        with conn.transaction():
            for index in dropped:
                conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, index)))
            if dropped:
                print(f"without {', '.join(dropped)} (dropped in a transaction, rolled back)")
            if args.with_sql:
                conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
                conn.execute(Path(args.with_sql).read_text().encode())
                print(f"with {args.with_sql} (in a transaction, rolled back)")
                dropped.append(args.with_sql)
            for kind in kinds:
                if kind in BEFORE:
                    stmt = sql.SQL(BEFORE[kind]).format(s=sql.Identifier(schema))
                    tagged = "%(tag)s" in BEFORE[kind]

                    def make(stmt: sql.Composed = stmt, tagged: bool = tagged) -> Request:
                        page, tag = rng.choice(t.tagged)
                        params = {"page": page, "tag": tag} if tagged else None
                        return Request("before", [(stmt, params)], None)

                    n = args.n if kind == "tag_before" else min(args.n, 5)
                else:
                    make = lambda kind=kind: request(kind, t, rng, cursors)  # noqa: E731
                    n = args.n
                if args.explain:
                    print(f"{kind}:\n{explain(conn, make())}")
                times, rows = time_sql(conn, make, n, None if args.prepared else False)
                print(f"SQL {kind:18} {percentiles(times)}  ({n} runs, {rows:.0f} rows)")
            if dropped:
                raise psycopg.Rollback()
    if args.no_api or dropped:
        return 0
    with AdminServer(settings, schema) as server:
        api_kinds = [k for k in kinds if k in KINDS and k != "status"]
        for kind in api_kinds:
            reqs = [request(kind, t, rng, cursors) for _ in range(args.n)]
            times = asyncio.run(time_api(server.base, reqs))
            print(f"API {kind:18} {percentiles(times)}  ({len(times)} runs)")
    if "status" in kinds:
        from admin.status import collect

        status_settings = settings.model_copy(update={"db_schema": schema})
        times = []
        for _ in range(min(args.n, 50)):
            started = time.perf_counter()
            collect(status_settings)
            times.append(time.perf_counter() - started)
        print(f"CLI status (collect) {percentiles(times)}  ({len(times)} runs, Kafka included)")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0
