"""Postgres connection factories (psycopg 3) with driver errors translated."""

from __future__ import annotations

import psycopg
from psycopg_pool import ConnectionPool

from convsync.errors import RetryableError
from convsync.settings import Settings


def connect(
    settings: Settings, *, autocommit: bool = True, timeout: float = 5.0
) -> psycopg.Connection[tuple[object, ...]]:
    """Return a new connection. Raises :class:`RetryableError` when Postgres is unreachable."""
    try:
        return psycopg.connect(
            settings.database_url.get_secret_value(),
            autocommit=autocommit,
            connect_timeout=max(1, int(timeout)),
            application_name="convsync",
        )
    except psycopg.OperationalError as e:
        raise RetryableError(f"Postgres unreachable: {e}") from e


def make_pool(settings: Settings, *, min_size: int = 1, max_size: int = 4) -> ConnectionPool:
    """Return an open connection pool for ``settings``."""
    return ConnectionPool(
        settings.database_url.get_secret_value(),
        min_size=min_size,
        max_size=max_size,
        kwargs={"application_name": "convsync"},
        open=True,
    )
