"""Apply the numbered SQL migrations in ``schemas/migrations/`` to a Postgres schema."""

from __future__ import annotations

import hashlib
import logging
import re
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
        found[version] = Migration(version, path.name, path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


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
) -> list[str]:
    """Apply every pending migration to ``schema``; return the names applied.

    Each migration runs in its own transaction together with its bookkeeping row, under
    a transaction-level advisory lock so concurrent migrators queue instead of racing.
    Re-running is a no-op. Raises :class:`MigrationError` when an applied file changed.
    """
    validate_schema_name(schema)
    migrations = load_migrations(directory)
    ident = sql.Identifier(schema)
    applied: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(ident)
        )
    for mig in migrations:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
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
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
            # bytes: the file is trusted SQL text, run as one simple-protocol batch.
            conn.execute(mig.sql_text.encode("utf-8"))
            conn.execute(
                sql.SQL(
                    "INSERT INTO {}.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)"
                ).format(ident),
                (mig.version, mig.name, mig.checksum),
            )
            applied.append(mig.name)
            log.info("applied migration %s to schema %s", mig.name, schema)
    return applied
