"""The profile fetcher's look for due users (contacts._DUE) at a large page's size.

    .venv/bin/python -m tests.bench.bench_contacts_due [--conversations 1000000]
        [--pages 20] [--named 0.99]

Loads ``--conversations`` conversations spread over ``--pages`` pages into a scratch
schema of the local stack (``convsync up``), gives ``--named`` of them a fresh contact,
then times the fetcher's query for every page together (what one tick runs) and prints
its plan. The schema is dropped at the end.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from psycopg import sql

from convsync.db import connect
from producers.crawler.contacts import _DUE
from schemas.migrate import apply_migrations
from tests.fixtures.stack import _stack_settings


def main() -> None:
    """Load, time, print, drop."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=1_000_000)
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--named", type=float, default=0.99)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    schema = f"bench_contacts_{uuid.uuid4().hex[:8]}"
    settings = _stack_settings().model_copy(update={"db_schema": schema})
    s = sql.Identifier(schema)
    n, pages = args.conversations, args.pages
    with connect(settings) as conn:
        apply_migrations(conn, schema=schema)
    try:
        with connect(settings) as conn:
            started = time.perf_counter()
            conn.execute(
                sql.SQL(
                    "INSERT INTO {s}.conversations (page_id, psid, platform, message_count,"
                    " last_message_at)"
                    " SELECT (100000 + i %% %s)::text, (9000000000 + i)::text, 'messenger', 1,"
                    " now() - i * interval '1 second' FROM generate_series(1, %s) AS i"
                ).format(s=s),
                (pages, n),
            )
            conn.execute(
                sql.SQL(
                    "INSERT INTO {s}.contacts (page_id, psid, name, source, fetched_at)"
                    " SELECT page_id, psid, 'x', 'participants', now()"
                    " FROM {s}.conversations WHERE random() < %s"
                ).format(s=s),
                (args.named,),
            )
            conn.execute(sql.SQL("ANALYZE {s}.conversations").format(s=s))
            conn.execute(sql.SQL("ANALYZE {s}.contacts").format(s=s))
            loaded = time.perf_counter() - started
        params = {
            "pages": [str(100000 + p) for p in range(pages)],
            "max_age": 7 * 86400.0,
            "max_attempts": 3,
            "backoff": 3600.0,
            "backoff_max": 7 * 86400.0,
            "limit": 100,
        }
        query = sql.SQL(_DUE).format(s=s)
        times = []
        with connect(settings) as conn:
            for _ in range(args.rounds):
                t = time.perf_counter()
                rows = conn.execute(query, params).fetchall()
                times.append((time.perf_counter() - t) * 1000)
            plan = conn.execute(sql.SQL("EXPLAIN (ANALYZE, COSTS OFF) ") + query, params)
            text = "\n".join(str(r[0]) for r in plan.fetchall())
        print(
            f"{n} conversations, {pages} pages, {args.named:.0%} named (loaded in"
            f" {loaded:.1f}s): {len(rows)} due; query median {statistics.median(times):.0f} ms,"
            f" min {min(times):.0f} ms over {args.rounds} rounds"
        )
        print(text)
    finally:
        with connect(settings) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(s))


if __name__ == "__main__":
    main()
