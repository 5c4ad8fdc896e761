"""Cost of the auto-clear triggers on a materializer-shaped upsert (not collected by pytest).

Run: .venv/bin/python -m tests.admin.bench_trigger [--rows 10000] [--rounds 5]
Upserts ``rows`` conversations whose last_outbound_at increases (10% of them tagged
needs_attention), with the triggers enabled and disabled, interleaved; prints medians
and the ratio. The machine is shared, so absolute times are noisy; the ratio less so.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from psycopg import sql

from convsync.db import connect
from convsync.settings import Settings
from schemas.migrate import apply_migrations

_SEED = """
INSERT INTO {s}.conversations (page_id, psid, last_outbound_at, updated_at)
SELECT 'p', 'u' || g, now() - interval '1 day', now() FROM generate_series(1, %s) AS g
"""
_TAG = """
INSERT INTO {s}.conversation_tags (page_id, psid, tags, version, updated_at)
SELECT 'p', 'u' || g, '{{needs_attention,vip}}', 1, now() - interval '2 days'
FROM generate_series(1, %s, 10) AS g
ON CONFLICT (page_id, psid) DO UPDATE SET tags = EXCLUDED.tags, updated_at = EXCLUDED.updated_at
"""
_UPSERT = """
INSERT INTO {s}.conversations AS c (page_id, psid, last_outbound_at, updated_at)
SELECT 'p', 'u' || g, now() + make_interval(secs => %s), now()
FROM generate_series(1, %s) AS g
ON CONFLICT (page_id, psid) DO UPDATE SET last_outbound_at = EXCLUDED.last_outbound_at,
    version = c.version + 1, updated_at = now()
WHERE c.last_outbound_at IS DISTINCT FROM EXCLUDED.last_outbound_at
"""
_CLEARED = "SELECT count(*) FROM {s}.conversation_tags WHERE tags = '{{vip}}'"
_TRIGGERS = "ALTER TABLE {s}.conversations {} TRIGGER USER"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    settings = Settings()
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    s = sql.Identifier(schema)
    timings: dict[str, list[float]] = {"ENABLE": [], "DISABLE": []}
    cleared = 0
    with connect(settings) as conn:
        apply_migrations(conn, schema=schema)
        try:
            conn.execute(sql.SQL(_SEED).format(s=s), (args.rows,))
            for i in range(args.rounds):
                for mode in ("ENABLE", "DISABLE"):
                    conn.execute(sql.SQL(_TAG).format(s=s), (args.rows,))
                    conn.execute(sql.SQL(_TRIGGERS).format(sql.SQL(mode), s=s))
                    t0 = time.perf_counter()
                    conn.execute(sql.SQL(_UPSERT).format(s=s), (i * 2 + len(mode), args.rows))
                    timings[mode].append(time.perf_counter() - t0)
                    if mode == "ENABLE":
                        row = conn.execute(sql.SQL(_CLEARED).format(s=s)).fetchone()
                        cleared = int(str(row[0])) if row else 0
        finally:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(s))
    on = statistics.median(timings["ENABLE"])
    off = statistics.median(timings["DISABLE"])
    print(f"rows per upsert: {args.rows}, tagged: {args.rows // 10}, rounds: {args.rounds}")
    print(f"median with triggers:    {on * 1000:.1f} ms")
    print(f"median without triggers: {off * 1000:.1f} ms")
    print(f"ratio: {on / off:.2f}x; tags cleared per enabled round: {cleared}")


if __name__ == "__main__":
    main()
