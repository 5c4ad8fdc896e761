"""Readers of the events topic read committed data only: an aborted transaction's events
never reach Postgres (any producer of events may one day write in transactions)."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest
from confluent_kafka import Producer
from psycopg import sql

from consumers.materializer import Materializer
from convsync.db import connect
from convsync.kafka import producer_config
from convsync.settings import Settings
from tests.consumers.helpers import produce, random_events
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema

pytestmark = pytest.mark.integration


def stored_event_ids(settings: Settings) -> set[str]:
    with connect(settings) as conn:
        rows = conn.execute(
            sql.SQL("SELECT event_id FROM {}.events").format(sql.Identifier(settings.db_schema))
        ).fetchall()
    return {str(r[0]) for r in rows}


def test_an_aborted_transactions_events_never_reach_postgres(
    make_topics: MakeTopics, make_schema: MakeSchema
) -> None:
    settings = make_schema(base=make_topics(partitions=3))
    rng = random.Random(5)
    aborted = random_events(rng, pages=2, users=3, n=30, mid_prefix="aborted")
    committed = random_events(rng, pages=2, users=3, n=30, mid_prefix="kept")
    topic = settings.topic("events")
    tx: Any = Producer(producer_config(settings, **{"transactional.id": uuid.uuid4().hex}))
    tx.init_transactions(30)
    tx.begin_transaction()
    for env in aborted:
        tx.produce(topic, env.to_bytes(), key=env.page_id.encode())
    tx.flush(30)  # in the log, then aborted
    tx.abort_transaction(30)
    produce(settings, committed)
    Materializer.from_settings(settings, group=f"mat-{uuid.uuid4().hex[:8]}").run_to_end()
    stored = stored_event_ids(settings)
    assert stored == {e.event_id for e in committed}
    assert not stored & {e.event_id for e in aborted}
