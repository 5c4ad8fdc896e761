"""Write the read-path data set into its own schema with COPY: prepare, chunks, finish.

Restartable: every chunk is written in one transaction together with its row in
``readpath_chunks``, so a killed generator runs again from the first chunk not written,
and the same chunks come out (the shape and the rows are functions of the seed).

Bulk loading as an operator would: the schema is migrated up to ``LOAD_AT`` (the
migrations before the read path's 0008), then the indexes and primary keys of
``events``, ``conversations`` and ``conversation_tags`` are dropped (their definitions
are kept in ``readpath_meta``), autovacuum and the tag triggers are off while the chunks
are written; ``finish`` builds the indexes again from the kept definitions, turns
everything back on, writes the crawl tables, runs ``VACUUM (ANALYZE)``, and then applies
the remaining migrations the way a live database is upgraded (0008 builds its indexes
CONCURRENTLY and fills its tables from the data: the time it takes is printed); the
users' contacts are written last, into the table those migrations made.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
import psycopg
from psycopg import sql

from convsync.db import connect
from convsync.settings import Settings
from schemas.migrate import apply_migrations
from tests.bench.read_path import people
from tests.bench.read_path.gen import (
    CONVERSATION_COLUMNS,
    EVENT_COLUMNS,
    TAG_COLUMNS,
    ChunkRows,
    chunk_rows,
)
from tests.bench.read_path.shape import NOW_MS, Shape

BULK_TABLES: Final = ("events", "conversations", "conversation_tags")
# The last migration applied before the data is loaded; later ones run at the end.
LOAD_AT: Final = 7
Conn = psycopg.Connection[tuple[Any, ...]]


class DatasetError(Exception):
    """The schema holds another data set, or is not one of ours."""


def _q(schema: str, text: str, **names: str) -> sql.Composed:
    idents = {k: sql.Identifier(v) for k, v in names.items()}
    return sql.SQL(text).format(s=sql.Identifier(schema), **idents)


def _meta(conn: Conn, schema: str, key: str) -> Any:
    row = conn.execute(
        _q(schema, "SELECT value FROM {s}.readpath_meta WHERE key = %s"), (key,)
    ).fetchone()
    return None if row is None else row[0]


def _set_meta(conn: Conn, schema: str, key: str, value: Any) -> None:
    conn.execute(
        _q(
            schema,
            "INSERT INTO {s}.readpath_meta (key, value) VALUES (%s, %s::jsonb)"
            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        ),
        (key, orjson.dumps(value).decode()),
    )


def exists(settings: Settings, schema: str) -> bool:
    """True when ``schema`` holds a read-path data set (finished or not)."""
    with connect(settings) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.readpath_meta",))
        found = row.fetchone()
    return bool(found and found[0])


def stored_shape(settings: Settings, schema: str) -> Shape:
    """Return the shape of the data set in ``schema``. Raises :class:`DatasetError` when
    there is none."""
    if not exists(settings, schema):
        raise DatasetError(f"schema {schema} holds no read-path data set: run generate first")
    with connect(settings) as conn:
        return Shape(**_meta(conn, schema, "shape"))


def prepare(settings: Settings, schema: str, shape: Shape) -> None:
    """Migrate ``schema`` and make it ready for bulk loading, or check that it holds
    ``shape`` already. Raises :class:`DatasetError` for another shape."""
    with connect(settings) as conn:
        conn.autocommit = True
        if exists(settings, schema):
            stored = _meta(conn, schema, "shape")
            if stored != shape.as_json():
                raise DatasetError(f"schema {schema} holds another data set: {stored}")
            return
        apply_migrations(conn, schema=schema, up_to=LOAD_AT)
        with conn.transaction():
            conn.execute(
                _q(
                    schema,
                    "CREATE TABLE {s}.readpath_meta (key text PRIMARY KEY, value jsonb NOT NULL);"
                    "CREATE TABLE {s}.readpath_chunks (chunk integer PRIMARY KEY,"
                    " events integer NOT NULL, conversations integer NOT NULL,"
                    " seconds double precision NOT NULL, written_at timestamptz NOT NULL"
                    " DEFAULT now())",
                )
            )
            _set_meta(conn, schema, "shape", shape.as_json())
            _set_meta(conn, schema, "indexes", _drop_indexes(conn, schema))
            for table in BULK_TABLES:
                conn.execute(
                    _q(schema, "ALTER TABLE {s}.{t} SET (autovacuum_enabled = false)", t=table)
                )
            conn.execute(_q(schema, "ALTER TABLE {s}.conversations DISABLE TRIGGER USER"))


def _drop_indexes(conn: Conn, schema: str) -> list[str]:
    """Drop the indexes and primary keys of the bulk tables; return the statements that
    build them again."""
    rebuild: list[str] = []
    rows = conn.execute(
        "SELECT t.relname, i.relname, pg_get_indexdef(x.indexrelid), c.conname,"
        " pg_get_constraintdef(c.oid)"
        " FROM pg_index AS x JOIN pg_class AS i ON i.oid = x.indexrelid"
        " JOIN pg_class AS t ON t.oid = x.indrelid"
        " JOIN pg_namespace AS n ON n.oid = t.relnamespace"
        " LEFT JOIN pg_constraint AS c ON c.conindid = x.indexrelid AND c.conrelid = t.oid"
        " WHERE n.nspname = %s AND t.relname = ANY(%s) ORDER BY t.relname, i.relname",
        (schema, list(BULK_TABLES)),
    ).fetchall()
    for table, index, indexdef, constraint, condef in rows:
        ident = sql.Identifier(schema, table)
        if constraint is not None:
            conn.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    ident, sql.Identifier(constraint)
                )
            )
            rebuild.append(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ")
                .format(ident, sql.Identifier(constraint))
                .as_string(conn)
                + condef
            )
        else:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, index)))
            rebuild.append(indexdef)
    return rebuild


def chunks_left(settings: Settings, schema: str, shape: Shape) -> list[int]:
    """The chunks not written yet."""
    with connect(settings) as conn:
        done = {
            int(r[0])
            for r in conn.execute(_q(schema, "SELECT chunk FROM {s}.readpath_chunks")).fetchall()
        }
    return [k for k in range(shape.chunks) if k not in done]


def _copy(
    cur: psycopg.Cursor[Any], schema: str, table: str, cols: tuple[str, ...], rows: Any
) -> None:
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(schema, table), sql.SQL(", ").join(sql.Identifier(c) for c in cols)
    )
    with cur.copy(stmt) as copy:
        for row in rows:
            copy.write_row(row)


def write_chunk(settings: Settings, schema: str, shape: Shape, k: int) -> tuple[int, float]:
    """Build and write chunk ``k`` (a no-op when it is written); return (events, seconds)."""
    started = time.perf_counter()
    rows: ChunkRows = chunk_rows(shape, k)
    with connect(settings) as conn, conn.transaction(), conn.cursor() as cur:
        # Two generators given the same chunk: the second waits, then finds it written.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s), %s)", (schema, k))
        cur.execute(_q(schema, "SELECT 1 FROM {s}.readpath_chunks WHERE chunk = %s"), (k,))
        if cur.fetchone() is not None:
            return 0, 0.0
        _copy(cur, schema, "events", EVENT_COLUMNS, rows.events)
        _copy(cur, schema, "conversations", CONVERSATION_COLUMNS, rows.conversations)
        _copy(cur, schema, "conversation_tags", TAG_COLUMNS, rows.tags)
        seconds = time.perf_counter() - started
        cur.execute(
            _q(
                schema,
                "INSERT INTO {s}.readpath_chunks (chunk, events, conversations, seconds)"
                " VALUES (%s, %s, %s, %s)",
            ),
            (k, len(rows.events), len(rows.conversations), seconds),
        )
    return len(rows.events), seconds


_WORKER: dict[str, Any] = {}


def _init_worker(settings: Settings, schema: str, shape: Shape) -> None:
    _WORKER.update(settings=settings, schema=schema, shape=shape)


def _run_chunk(k: int) -> tuple[int, int, float]:
    n, seconds = write_chunk(_WORKER["settings"], _WORKER["schema"], _WORKER["shape"], k)
    return k, n, seconds


def write_chunks(
    settings: Settings,
    schema: str,
    shape: Shape,
    *,
    jobs: int,
    report: Callable[[str], None] = print,
) -> int:
    """Write every chunk not written yet, ``jobs`` at a time; return events written."""
    left = chunks_left(settings, schema, shape)
    if not left:
        return 0
    report(f"{len(left)} of {shape.chunks} chunks to write, {jobs} at a time")
    written, started = 0, time.monotonic()
    with ProcessPoolExecutor(
        max_workers=jobs, initializer=_init_worker, initargs=(settings, schema, shape)
    ) as pool:
        for i, (k, n, seconds) in enumerate(pool.map(_run_chunk, left), 1):
            written += n
            elapsed = time.monotonic() - started
            eta = elapsed / i * (len(left) - i)
            report(
                f"chunk {k}: {n} events in {seconds:.1f} s; {i}/{len(left)} done,"
                f" {written / elapsed:,.0f} events/s, eta {eta / 60:.1f} min,"
                f" load {os.getloadavg()[0]:.1f}"
            )
    return written


def finish(
    settings: Settings, schema: str, shape: Shape, report: Callable[[str], None] = print
) -> None:
    """Build the indexes again, turn triggers and autovacuum back on, write the crawl
    tables, VACUUM (ANALYZE). Does nothing when done already."""
    with connect(settings) as conn:
        conn.autocommit = True
        if _meta(conn, schema, "finished"):
            return
        conn.execute("SET maintenance_work_mem = '512MB'")
        for stmt in _meta(conn, schema, "indexes"):
            started = time.monotonic()
            # An index built by an earlier finish that was stopped after it is kept.
            with contextlib.suppress(psycopg.errors.DuplicateTable, psycopg.errors.DuplicateObject):
                conn.execute(stmt.encode())
            report(f"{time.monotonic() - started:7.1f} s  {stmt}")
        for table in BULK_TABLES:
            conn.execute(_q(schema, "ALTER TABLE {s}.{t} RESET (autovacuum_enabled)", t=table))
        conn.execute(_q(schema, "ALTER TABLE {s}.conversations ENABLE TRIGGER USER"))
        with conn.transaction():
            conn.execute(_q(schema, "DELETE FROM {s}.crawl_history"))
            conn.execute(_q(schema, "DELETE FROM {s}.crawl_state"))
            _crawl_tables(conn, schema, shape)
        for table in (*BULK_TABLES, "crawl_state", "crawl_history"):
            started = time.monotonic()
            conn.execute(_q(schema, "VACUUM (ANALYZE) {s}.{t}", t=table))
            report(f"{time.monotonic() - started:7.1f} s  VACUUM (ANALYZE) {table}")
        started = time.monotonic()
        applied = apply_migrations(conn, schema=schema)
        report(f"{time.monotonic() - started:7.1f} s  migrations {', '.join(applied) or '-'}")
        for table in ("events", "conversations"):
            conn.execute(_q(schema, "ANALYZE {s}.{t}", t=table))
        _set_meta(conn, schema, "finished", True)
    fill_contacts(settings, schema, shape, report)


def fill_contacts(
    settings: Settings, schema: str, shape: Shape, report: Callable[[str], None] = print
) -> None:
    """Write the users' contacts (tests/bench/read_path/people.py) once, into the table
    of the last migrations, with its indexes in place as on a live database; ANALYZE."""
    started = time.monotonic()
    with connect(settings) as conn:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(_q(schema, "LOCK TABLE {s}.contacts IN EXCLUSIVE MODE"))
            if cur.execute(_q(schema, "SELECT 1 FROM {s}.contacts LIMIT 1")).fetchone():
                return
            _copy(cur, schema, "contacts", people.COLUMNS, people.contact_rows(shape))
        conn.autocommit = True
        conn.execute(_q(schema, "ANALYZE {s}.contacts"))
    report(f"{time.monotonic() - started:7.1f} s  contacts")


def _crawl_tables(conn: Conn, schema: str, shape: Shape) -> None:
    """Crawl state and history of every page: a first full crawl, then incremental ones
    (about eight), a few failed; 1 % of the pages are crawling now."""
    rng = random.Random(shape.seed)
    now = datetime.fromtimestamp(NOW_MS / 1000, UTC)
    history: list[tuple[Any, ...]] = []
    states: list[tuple[Any, ...]] = []
    for page, size in enumerate(shape.page_sizes):
        page_id = shape.page_id(page)
        crawls = 1 + min(30, int(rng.expovariate(1 / 8)))
        at = now - timedelta(days=700 * rng.random() + 30)
        last = None
        for i in range(crawls):
            at += timedelta(days=rng.random() * 20, seconds=rng.random() * 3600)
            took = timedelta(seconds=(size if i == 0 else size / 20) * (0.2 + rng.random()))
            status = "failed" if rng.random() < 0.03 else "done"
            crawl_id = f"cr_{page}_{i}"
            messages = rng.randrange(1, 40) * (size if i == 0 else max(1, size // 20))
            history.append(
                (crawl_id, page_id, i == 0, status, at, at, at + took, i + 1, size, messages,
                 messages // 25 + 1, "graph error 2 (temporary)" if status == "failed" else None,
                 at + took)
            )  # fmt: skip
            last = (crawl_id, status, at, at + took, size, messages)
        assert last is not None
        running = rng.random() < 0.01
        crawl_id, status, started, finished, size_done, messages = last
        if running:
            crawl_id, status, started, finished = f"cr_{page}_run", "running", now, None
            history.append(
                (crawl_id, page_id, False, "running", now, now, None, 3, size // 3, 0, 3, None,
                 now)
            )  # fmt: skip
        states.append(
            (page_id, status, crawl_id, started, finished, finished or now, size_done, messages,
             messages // 25 + 1, size_done, messages)
        )  # fmt: skip
    with conn.cursor() as cur:
        _copy(
            cur, schema, "crawl_history",
            ("crawl_id", "page_id", "full_crawl", "status", "requested_at", "started_at",
             "finished_at", "step_seq", "conversations_done", "messages_fetched", "api_calls",
             "last_error", "updated_at"),
            history,
        )  # fmt: skip
        _copy(
            cur, schema, "crawl_state",
            ("page_id", "status", "crawl_id", "started_at", "finished_at", "updated_at",
             "conversations_fetched", "messages_fetched", "api_calls", "conversations_listed",
             "messages_expected"),
            states,
        )  # fmt: skip


def drop(settings: Settings, schema: str) -> None:
    """Drop the data set's schema. Raises :class:`DatasetError` for a schema that is not
    a read-path data set."""
    if not exists(settings, schema):
        raise DatasetError(f"schema {schema} holds no read-path data set")
    with connect(settings) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        conn.commit()
