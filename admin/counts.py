"""Row counts and the insert rate of `convsync status`, without reading every row.

``count(*)`` reads the whole table, and ``count(*) ... WHERE inserted_at > now() - 1
minute`` did too (``inserted_at`` has no index): seconds per call at tens of millions
of events, and the dashboard asks every two seconds. So:

- a table whose estimate is below ``EXACT_BELOW`` rows is counted exactly (that is a few
  milliseconds), so small installations, tests and the demo see exact figures;
- a larger table's figure is PostgreSQL's estimate: ``pg_stat_user_tables.n_live_tup``
  (rows inserted minus deleted, kept by the statistics system as transactions commit;
  each backend publishes its counts about once a second), or ``pg_class.reltuples`` (as
  of the last VACUUM or ANALYZE) when the statistics were reset since;
- the insert rate is the change of ``n_tup_ins`` (rows inserted, ever) over a window:
  an estimate too, as fine-grained as backends publish their counts.

Every figure says whether it is an estimate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import sql

EXACT_BELOW: Final = 50_000

# The statistics functions behind pg_stat_user_tables, for one table: the view computes
# its columns for every table of the database before it is filtered.
_STATS: Final = """
SELECT pg_stat_get_live_tuples(c.oid), GREATEST(c.reltuples, 0)::bigint,
       pg_stat_get_tuples_inserted(c.oid)
FROM pg_class AS c
WHERE c.oid = to_regclass(format('%%I.%%I', %s::text, %s::text)) AND c.relkind IN ('r', 'p')
"""


@dataclass(frozen=True, slots=True)
class TableCount:
    """A table's row count, whether it is an estimate, and its rows inserted ever."""

    rows: int
    estimated: bool
    inserted: int


def count_rows(
    conn: psycopg.Connection[Any], schema: str, table: str, *, exact_below: int = EXACT_BELOW
) -> TableCount:
    """Return the rows of ``schema.table``: exact below ``exact_below``, else estimated.

    A missing table counts 0 rows (exactly).
    """
    row = conn.execute(_STATS, (schema, table)).fetchone()
    if row is None:
        return TableCount(0, False, 0)
    live, reltuples, inserted = (int(v) for v in row)
    estimate = live if live > 0 else reltuples
    if estimate >= exact_below:
        return TableCount(estimate, True, inserted)
    exact = conn.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
    ).fetchone()
    return TableCount(int(exact[0]) if exact else 0, False, inserted)


def inserted_rows(conn: psycopg.Connection[Any], schema: str, table: str) -> int:
    """Return the rows ever inserted into ``schema.table`` (statistics; 0 if unknown)."""
    row = conn.execute(_STATS, (schema, table)).fetchone()
    return int(row[2]) if row else 0


def insert_rate(
    conn: psycopg.Connection[Any], schema: str, table: str, first: int, since: float, window: float
) -> float:
    """Return rows inserted per second since ``first`` was read at ``since``
    (``time.monotonic()``), waiting until ``window`` seconds have passed."""
    time.sleep(max(0.0, since + window - time.monotonic()))
    last = inserted_rows(conn, schema, table)
    return max(0, last - first) / max(time.monotonic() - since, 1e-9)
