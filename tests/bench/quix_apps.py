"""The Quix Streams applications the peer benchmarks run convsync against.

Each runs as its own process, the way a user would deploy it, with Quix Streams' default
settings except where noted, and reads its settings from the same ``CONVSYNC_*``
environment as ``convsync materialize`` / ``convsync streams`` (no secret in its
arguments):

* ``sink GROUP TABLE COUNT``: ``<prefix>.events`` -> the event rows of
  ``consumers.materializer`` (the same columns and values the materializer writes,
  built by its own ``stage_row``/``event_row``) -> ``PostgreSQLSink`` into
  ``<db_schema>.TABLE`` (created by the benchmark with the shape of ``events``), at
  least once, as the sink is built. Sink settings beyond the defaults, each because the
  same rows need it: ``primary_key_columns="event_id"`` and ``on_conflict_do_nothing``
  (the log holds copies of events; without them the first copy ends the run with a
  duplicate-key error), ``include_metadata=False`` (no ``__key``/``timestamp`` columns:
  the same table shape). Stops after COUNT records with a final checkpoint
  (``Application.run(count=...)``), so no idle commit interval is timed.
* ``fold GROUP``: ``<prefix>.events`` -> ``streams.change.step`` per conversation, the
  state in Quix's RocksDB store (``State.get``/``State.set`` keyed by the conversation,
  inside the page's key scope, changelogged) -> change records (``encode_change``) on
  ``<prefix>.conversations`` keyed by conversation. Values are stored as the bytes of
  ``encode_state`` (``RocksDBOptions`` dumps/loads pass bytes through instead of
  JSON-encoding them a second time).

Run: ``.venv-peers/bin/python -m tests.bench.quix_apps sink|fold ...`` (the benchmarks do,
in the environment tests/bench/peers_venv.py makes).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import orjson
from psycopg.conninfo import conninfo_to_dict
from quixstreams import Application, State, message_context
from quixstreams.models import SerializationContext, Serializer
from quixstreams.state.rocksdb import RocksDBOptions

from consumers.materializer.folding import event_row
from consumers.materializer.rows import Position, stage_row
from consumers.materializer.statements import EVENT_COLUMNS
from convsync.settings import Settings
from schemas.conversation import conversation_key
from schemas.envelope import Envelope
from streams.change import Edit, Step, StreamState, encode_change, step
from streams.codec import decode_edit, decode_state, encode_edit, encode_state
from streams.digests import DigestIndex


def _first_seen() -> None:
    # The benchmarks time from a side's first durable output; this line is only for
    # reading the logs of a run.
    print(f"FIRST {time.monotonic():.6f}", flush=True)


def sink_app(settings: Settings, group: str, table: str, count: int) -> None:
    """Run the sink application until ``count`` records went through; then exit."""
    from quixstreams.sinks.community.postgresql import PostgreSQLSink

    db = conninfo_to_dict(settings.database_url.get_secret_value())
    app = Application(
        broker_address=settings.kafka_bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        loglevel="WARNING",
    )
    events = app.topic(
        settings.topic("events"), key_deserializer="bytes", value_deserializer="bytes"
    )
    first = [True]

    def to_row(value: bytes) -> dict[str, Any]:
        if first[0]:
            first[0] = False
            _first_seen()
        ctx = message_context()
        row = event_row(
            stage_row(Envelope.from_bytes(value), Position(ctx.topic, ctx.partition, ctx.offset), 0)
        )
        return dict(zip(EVENT_COLUMNS, row, strict=True))

    sink = PostgreSQLSink(
        host=str(db.get("host", "127.0.0.1")),
        port=int(db.get("port", 5432)),
        dbname=str(db["dbname"]),
        user=str(db.get("user", "")),
        password=str(db.get("password", "")),
        table_name=table,
        schema_name=settings.db_schema,
        primary_key_columns=["event_id", "psid"],
        on_conflict_do_nothing=True,
        include_metadata=False,
    )
    app.dataframe(events).apply(to_row).sink(sink)
    app.run(count=count, collect=False)


class _ChangeValue(Serializer):
    """The value of a ``(key, change record)`` pair (the key goes through ``to_topic``)."""

    def __call__(self, value: tuple[bytes, bytes], ctx: SerializationContext) -> bytes:
        return value[1]


def _dumps(value: Any) -> bytes:
    return value if isinstance(value, bytes) else orjson.dumps(value)


def _loads(value: bytes) -> bytes:
    return value


class QuixSide:
    """The fold's side tables (sealed digest chunks, winning edits) in the Quix state store,
    under keys of their own next to the conversation records."""

    def __init__(self) -> None:
        self.state: State | None = None  # the current message's state, set before each step
        self.indexes: dict[str, DigestIndex] = {}

    def _store(self) -> State:
        assert self.state is not None
        return self.state

    def sealed(self, key: str, state: StreamState, value: bytes) -> bool:
        index = self.indexes.get(key)
        if index is None or index.chunks != state.sealed:
            store = self._store()
            index = DigestIndex.build(store.get(f"chunk:{key}:{n}") for n in range(state.sealed))
            self.indexes[key] = index
        return value in index

    def edit(self, key: str, mid: str) -> Edit | None:
        raw = self._store().get(f"edit:{key}:{mid}")
        return None if raw is None else decode_edit(raw)

    def record(self, result: Step) -> None:
        store, key = self._store(), result.state.key
        if result.chunk is not None:
            store.set(f"chunk:{key}:{result.state.sealed - 1}", result.chunk)
            index = self.indexes.get(key)
            if index is not None and index.chunks == result.state.sealed - 1:
                index.add(result.chunk)
        if result.edit is not None:
            store.set(f"edit:{key}:{result.edit[0]}", encode_edit(result.edit[1]))


def fold_app(settings: Settings, group: str, state_dir: str) -> None:
    """Run the fold application until SIGTERM."""
    app = Application(
        broker_address=settings.kafka_bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        state_dir=state_dir,
        rocksdb_options=RocksDBOptions(dumps=_dumps, loads=_loads),
        loglevel="WARNING",
    )
    events = app.topic(
        settings.topic("events"), key_deserializer="bytes", value_deserializer="bytes"
    )
    out = app.topic(
        settings.topic("conversations"), key_serializer="bytes", value_serializer=_ChangeValue()
    )
    first = [True]
    side = QuixSide()

    def fold(value: bytes, state: State) -> list[tuple[bytes, bytes]]:
        if first[0]:
            first[0] = False
            _first_seen()
        event = Envelope.from_bytes(value)
        key = conversation_key(event.page_id, event.psid)
        stored = state.get(key)
        before: StreamState | None = None if stored is None else decode_state(stored).state
        side.state = state
        result = step(before, event, side)
        side.record(result)
        if result.state is not before:
            state.set(key, encode_state(result.state))
        if not result.emitted:
            return []
        return [(key.encode(), encode_change(result, event))]

    sdf = app.dataframe(events).apply(fold, stateful=True, expand=True)
    sdf.to_topic(out, key=lambda pair: pair[0])
    app.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="app", required=True)
    sink = sub.add_parser("sink")
    sink.add_argument("group")
    sink.add_argument("table")
    sink.add_argument("count", type=int)
    fold = sub.add_parser("fold")
    fold.add_argument("group")
    fold.add_argument("state_dir")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = Settings()
    if args.app == "sink":
        sink_app(settings, args.group, args.table, args.count)
    else:
        fold_app(settings, args.group, args.state_dir)


if __name__ == "__main__":
    main()
