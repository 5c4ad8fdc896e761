"""Rebuild the projection from offset 0 into a fresh schema, and compare projections."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Final

from psycopg import sql

from consumers.materializer.config import BatchConfig
from consumers.materializer.connections import translate_errors
from consumers.materializer.engine import Materializer, Totals
from convsync.db import connect
from convsync.errors import ConfigError
from convsync.settings import Settings
from schemas.migrate import apply_migrations, validate_schema_name

log = logging.getLogger(__name__)

# Columns that say when or how a row arrived (which copy, which batch), not what it is.
_CONVERSATION_COLUMNS: Final = (
    "page_id", "psid", "thread_id", "first_message_at", "last_message_at", "message_count",
    "last_message_text", "last_message_event", "last_inbound_at", "last_outbound_at",
    "needs_reply", "read_watermark", "delivered_watermark", "platform",
)  # fmt: skip
_EVENT_COLUMNS: Final = (
    "event_id", "page_id", "psid", "kind", "mid", "occurred_at", "direction", "text",
    "watermark", "thread_id", "source", "attrs", "payload", "num_edit", "copy_digest",
    "platform",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What a replay built."""

    schema: str
    group: str
    totals: Totals


def checksum(settings: Settings, schema: str) -> str:
    """Return an md5 over the ordered conversations and events rows of ``schema``,
    without arrival-specific columns (version, updated_at, inserted_at, topic/offset).

    Two projections of the same log have the same checksum.
    """
    ident = sql.Identifier(validate_schema_name(schema))

    def digest(table: str, columns: tuple[str, ...], order: tuple[str, ...]) -> sql.Composed:
        return sql.SQL(
            "SELECT md5(COALESCE(string_agg(row_text, E'\\n' ORDER BY {order}), '')) FROM "
            "(SELECT {order_cols}, ROW({cols})::text AS row_text FROM {schema}.{table}) AS t"
        ).format(
            order=sql.SQL(", ").join(
                sql.SQL('{} COLLATE "C"').format(sql.Identifier(c)) for c in order
            ),
            order_cols=sql.SQL(", ").join(sql.Identifier(c) for c in order),
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
            schema=ident,
            table=sql.Identifier(table),
        )

    with translate_errors("checksum"), connect(settings) as conn:
        conv = conn.execute(
            digest("conversations", _CONVERSATION_COLUMNS, ("page_id", "psid"))
        ).fetchone()
        events = conn.execute(digest("events", _EVENT_COLUMNS, ("event_id", "psid"))).fetchone()
    assert conv is not None and events is not None
    return f"{conv[0]}:{events[0]}"


def prepare_schema(settings: Settings, schema: str) -> None:
    """Migrate ``schema`` and make sure it holds no projection yet.

    Raises :class:`ConfigError` when it already has events or conversations.
    """
    validate_schema_name(schema)
    with translate_errors("prepare replay schema"), connect(settings) as conn:
        apply_migrations(conn, schema=schema)
        ident = sql.Identifier(schema)
        row = conn.execute(
            sql.SQL(
                "SELECT (SELECT count(*) FROM {s}.events)"
                " + (SELECT count(*) FROM {s}.conversations)"
            ).format(s=ident)
        ).fetchone()
    if row is None or int(row[0]) != 0:  # type: ignore[call-overload]
        raise ConfigError(f"schema {schema} already holds a projection; replay needs a fresh one")


def replay(settings: Settings, *, into: str, config: BatchConfig | None = None) -> ReplayResult:
    """Rebuild the projection of ``<prefix>.events`` into the fresh schema ``into``.

    Reads every partition from the beginning to the end offsets it has when the replay
    starts, with a throwaway group, then stops. Raises ConfigError for a non-fresh schema.
    """
    prepare_schema(settings, into)
    group = f"convsync-replay-{uuid.uuid4().hex[:12]}"
    mat = Materializer.from_settings(settings, group=group, schema=into, batch=config)
    totals = mat.run_to_end()
    log.info("replayed %s records into %s (%s inserted)", totals.records, into, totals.inserted)
    return ReplayResult(schema=into, group=group, totals=totals)
