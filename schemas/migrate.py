"""Apply the numbered SQL migrations in ``schemas/migrations/`` to a Postgres schema.

A migration runs in one transaction with its bookkeeping row, unless its header (the
comment lines it starts with) has the line ``-- convsync: no-transaction``. Such a file
runs statement by statement, each committed on its own, which is what ``CREATE INDEX
CONCURRENTLY`` needs (it refuses a transaction block) so that an index on a live, large
table is built without blocking writes. Its statements must be idempotent, since a crash
midway leaves the first ones applied and the retry runs them all again: ``IF NOT
EXISTS``, ``CREATE OR REPLACE``, a ``DO`` block that checks before it alters. An index a
failed ``CREATE INDEX CONCURRENTLY`` left behind is INVALID (it exists, so ``IF NOT
EXISTS`` would skip it); the migrator drops such an index and builds it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import psycopg
from psycopg import sql

from convsync.errors import ConfigError, ConvsyncError

log = logging.getLogger(__name__)

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
_NAME: Final = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Any constant works; it only has to be the same for every convsync migrator.
_LOCK_KEY: Final = 0x636F6E76
NO_TRANSACTION: Final = "-- convsync: no-transaction"
_CONCURRENT_INDEX: Final = re.compile(
    r"^\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(IF\s+NOT\s+EXISTS\s+)?([a-z_][a-z0-9_]*)",
    re.IGNORECASE,
)
_ANY_INDEX: Final = re.compile(r"^\s*CREATE\s+(?:UNIQUE\s+)?INDEX\b", re.IGNORECASE)
# How long a migrator waits for another one to finish.
LOCK_WAIT_SECONDS: Final = 900.0
# How long a no-transaction statement waits for a table lock, and how often it tries.
LOCK_TIMEOUT: Final = "2s"
LOCK_ATTEMPTS: Final = 60


class MigrationError(ConvsyncError):
    """A migration file is malformed or was changed after it was applied."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql_text: str

    @property
    def checksum(self) -> str:
        """Return the sha256 of the file's text."""
        return hashlib.sha256(self.sql_text.encode("utf-8")).hexdigest()

    @property
    def transactional(self) -> bool:
        """False when the file's header says ``-- convsync: no-transaction``."""
        for line in self.sql_text.splitlines():
            line = line.strip()
            if not line:
                continue
            if not line.startswith("--"):
                return True
            if line == NO_TRANSACTION:
                return False
        return True

    def statements(self) -> list[str]:
        """Return the file's statements (comments and blank text dropped)."""
        return split_statements(self.sql_text)

    def concurrent_indexes(self) -> list[str]:
        """Return the names of the indexes the file builds with CREATE INDEX CONCURRENTLY."""
        found = (_CONCURRENT_INDEX.match(stmt) for stmt in self.statements())
        return [m.group(2).lower() for m in found if m]


def _scan(text: str) -> Iterator[tuple[int, str]]:
    """Yield (position, character) of ``text`` outside comments and quoted text, with
    every statement-ending ``;`` among them."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        if c in "'\"":
            end = i + 1
            while True:
                end = text.find(c, end)
                if end < 0:
                    raise MigrationError(f"unterminated {c} quote in a migration")
                if text.startswith(c * 2, end):
                    end += 2
                    continue
                break
            yield i, text[i : end + 1]
            i = end + 1
            continue
        if c == "$":
            m = re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$", text[i:])
            if m:
                tag = m.group(0)
                end = text.find(tag, i + len(tag))
                if end < 0:
                    raise MigrationError(f"unterminated {tag} quote in a migration")
                yield i, text[i : end + len(tag)]
                i = end + len(tag)
                continue
        yield i, c
        i += 1


def split_statements(text: str) -> list[str]:
    """Return the SQL statements of ``text``, split at the semicolons that end them.

    Semicolons inside comments, quoted strings, quoted identifiers and dollar-quoted
    bodies do not split. Raises :class:`MigrationError` on an unterminated quote.
    """
    out: list[str] = []
    current: list[str] = []
    for _, piece in _scan(text):
        if piece == ";":
            stmt = "".join(current).strip()
            if stmt:
                out.append(stmt)
            current = []
        else:
            current.append(piece)
    stmt = "".join(current).strip()
    if stmt:
        out.append(stmt)
    return out


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Return the migrations in ``directory`` ordered by version.

    Raises :class:`MigrationError` for a misnamed file or a duplicated version.
    """
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"migration file name must be NNNN_name.sql: {path.name}")
        version = int(m.group(1))
        if version in found:
            raise MigrationError(f"two migrations share version {version}")
        mig = Migration(version, path.name, path.read_text(encoding="utf-8"))
        if not mig.transactional:
            _check_retry_safe(mig)
        found[version] = mig
    return [found[v] for v in sorted(found)]


def _check_retry_safe(mig: Migration) -> None:
    # A no-transaction file is run again from its first statement after a crash: an
    # index statement that is not CONCURRENTLY would block writes, one without IF NOT
    # EXISTS would fail the retry.
    for stmt in mig.statements():
        if _ANY_INDEX.match(stmt):
            m = _CONCURRENT_INDEX.match(stmt)
            if m is None or not m.group(1):
                raise MigrationError(
                    f"{mig.name}: a no-transaction migration builds indexes with "
                    "CREATE INDEX CONCURRENTLY IF NOT EXISTS"
                )


def validate_schema_name(schema: str) -> str:
    """Return ``schema`` if it is a plain lower-case identifier; raise ConfigError."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
        raise ConfigError(f"schema name must be a lower-case identifier: {schema!r}")
    return schema


def apply_migrations(
    conn: psycopg.Connection[tuple[object, ...]],
    *,
    schema: str = "convsync",
    directory: Path = MIGRATIONS_DIR,
    lock_wait: float = LOCK_WAIT_SECONDS,
    up_to: int | None = None,
) -> list[str]:
    """Apply every pending migration to ``schema``; return the names applied.

    ``conn`` must be in autocommit mode with no transaction open. Concurrent migrators
    queue on a session-level advisory lock, taken by polling (a migrator blocked in a
    lock wait would hold a snapshot that ``CREATE INDEX CONCURRENTLY`` waits for: a
    deadlock). A transactional migration runs in one transaction with its bookkeeping
    row; a no-transaction one statement by statement (see the module docstring).
    Re-running is a no-op. Raises :class:`MigrationError` when an applied file changed
    or the lock is not free within ``lock_wait`` seconds. ``up_to``: apply versions up
    to this one only.
    """
    validate_schema_name(schema)
    migrations = [m for m in load_migrations(directory) if up_to is None or m.version <= up_to]
    if not conn.autocommit:
        raise MigrationError("apply_migrations needs an autocommit connection")
    ident = sql.Identifier(schema)
    applied: list[str] = []
    _lock(conn, lock_wait)
    try:
        with conn.transaction():
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                ).format(ident)
            )
        for mig in migrations:
            row = conn.execute(
                sql.SQL("SELECT checksum FROM {}.schema_migrations WHERE version = %s").format(
                    ident
                ),
                (mig.version,),
            ).fetchone()
            if row is not None:
                if row[0] != mig.checksum:
                    raise MigrationError(
                        f"migration {mig.name} changed after it was applied to {schema}"
                    )
                continue
            record = sql.SQL(
                "INSERT INTO {}.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)"
            ).format(ident)
            if mig.transactional:
                with conn.transaction():
                    conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
                    # bytes: the file is trusted SQL text, run as one simple-protocol batch.
                    conn.execute(mig.sql_text.encode("utf-8"))
                    conn.execute(record, (mig.version, mig.name, mig.checksum))
            else:
                _run_outside_transaction(conn, schema, mig)
                conn.execute(record, (mig.version, mig.name, mig.checksum))
            applied.append(mig.name)
            log.info("applied migration %s to schema %s", mig.name, schema)
    finally:
        # A broken connection has lost the lock with its session already.
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied


def _lock(conn: psycopg.Connection[tuple[object, ...]], wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK_KEY,)).fetchone()
        if row is not None and row[0]:
            return
        if time.monotonic() > deadline:
            raise MigrationError(f"another migrator held the migration lock for {wait:.0f} s")
        time.sleep(0.2)


def _run_statement(conn: psycopg.Connection[tuple[object, ...]], stmt: str) -> None:
    """Run one statement of a no-transaction migration in its own transaction.

    A statement that needs a table lock (ALTER TABLE takes ACCESS EXCLUSIVE, however
    short its work) waits at most LOCK_TIMEOUT for it: a lock request queued behind a
    long transaction would block every writer of the table behind it. It is tried
    again after a pause, LOCK_ATTEMPTS times. An index build CONCURRENTLY is exempt: it
    waits for older transactions by design, without blocking writers.
    """
    # bytes: one trusted statement per simple-protocol query, so none of them runs
    # inside an implicit transaction block.
    text = stmt.encode("utf-8")
    if _CONCURRENT_INDEX.match(stmt):
        conn.execute(text)
        return
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (LOCK_TIMEOUT,))
            conn.execute(text)
        except psycopg.errors.LockNotAvailable:
            if attempt == LOCK_ATTEMPTS:
                raise
            log.warning("migration statement waited %s for a lock; trying again", LOCK_TIMEOUT)
            time.sleep(min(5.0, 0.5 * attempt))
        else:
            return
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.execute("RESET lock_timeout")


def _run_outside_transaction(
    conn: psycopg.Connection[tuple[object, ...]], schema: str, mig: Migration
) -> None:
    """Run a no-transaction migration statement by statement, each committed alone."""
    ident = sql.Identifier(schema)
    previous = conn.execute("SELECT current_setting('search_path')").fetchone()
    conn.execute(sql.SQL("SET search_path TO {}").format(ident))
    try:
        for name in mig.concurrent_indexes():
            invalid = conn.execute(
                "SELECT NOT i.indisvalid FROM pg_index AS i"
                " JOIN pg_class AS c ON c.oid = i.indexrelid"
                " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relname = %s",
                (schema, name),
            ).fetchone()
            if invalid is not None and invalid[0]:
                log.warning("dropping the invalid index %s.%s left by a failed build", schema, name)
                conn.execute(
                    sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
                        ident, sql.Identifier(name)
                    )
                )
        for stmt in mig.statements():
            _run_statement(conn, stmt)
    finally:
        if previous is not None:
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT set_config('search_path', %s, false)", (previous[0],))
