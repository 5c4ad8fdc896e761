"""The materializer's Postgres connections: a psycopg_pool pool and error translation."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg_pool import ConnectionPool

from consumers.materializer import statements as st
from convsync.errors import ConfigError, PoisonError, RetryableError

Conn = psycopg.Connection[tuple[object, ...]]

# Seconds to wait for a connection (a new one, or one from the pool) per attempt.
CONNECT_TIMEOUT: Final = 3
# Seconds the pool keeps retrying one connection before it gives it up (see make_pool).
RECONNECT_TIMEOUT: Final = 10.0


@contextmanager
def translate_errors(action: str) -> Iterator[None]:
    """Re-raise psycopg errors as RetryableError (connection, shutdown, conflicts),
    PoisonError (data the database will never accept) or ConfigError (schema missing)."""
    try:
        yield
    except (pgerrors.UndefinedTable, pgerrors.UndefinedColumn, pgerrors.InvalidSchemaName) as e:
        raise ConfigError(f"{action}: the schema is not migrated ({e})") from e
    except pgerrors.UniqueViolation as e:
        # Every statement but the events COPY upserts. Only a writer that does not hold
        # the batch's partition locks can store one of its ids between the lookup and
        # the COPY (a producer that put an event under another key): nothing was
        # applied, and the retry's lookup sees that row.
        raise RetryableError(f"{action}: an event was stored concurrently: {e}") from e
    except (psycopg.DataError, psycopg.IntegrityError) as e:
        raise PoisonError(f"{action}: Postgres refused the data: {e}") from e
    except (
        psycopg.OperationalError,
        psycopg.InterfaceError,
        pgerrors.TransactionRollback,
        pgerrors.AdminShutdown,
        pgerrors.CannotConnectNow,
    ) as e:
        raise RetryableError(f"{action}: Postgres unavailable: {e}") from e


def configure(conn: Conn, schema: str) -> None:
    """Prepare a new pool connection for the projection ``schema`` (the pool's
    ``configure`` callback: runs once per connection, before it is handed out)."""
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    # JIT compiling the fold's plan costs a large share of a batch and gains nothing
    # on these index-driven plans (measured in docs/materializer.md).
    conn.execute("SET jit = off")
    # The fold probes `conversations` once per touched row with distinct keys:
    # Memoize caches nothing there and only slows the fold (docs/materializer.md).
    conn.execute("SET enable_memoize = off")
    conn.execute(st.CREATE_SCRATCH)


def make_pool(url: str, schema: str, size: int) -> ConnectionPool[Conn]:
    """Return a pool of ``size`` connections to the projection ``schema``, not yet open.

    psycopg_pool reconnects in the background and checks a connection before handing it
    out (a Postgres restart leaves every pooled connection broken). ``reconnect_timeout``
    is short so that the pool never waits long between its own connection attempts
    during an outage: a getconn after it gave up starts a fresh attempt at once, and the
    materializer's own retry loop (capped backoff) sets the pace.
    """
    return ConnectionPool(
        url,
        min_size=size,
        max_size=size,
        kwargs={
            "autocommit": True,
            "connect_timeout": CONNECT_TIMEOUT,
            "application_name": "convsync-materializer",
        },
        configure=functools.partial(configure, schema=schema),
        check=ConnectionPool.check_connection,
        reconnect_timeout=RECONNECT_TIMEOUT,
        name="materializer",
        open=False,
    )
