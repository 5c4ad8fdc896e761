"""``convsync smoke``: a real round trip through the running stack."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from confluent_kafka import KafkaError, TopicPartition
from psycopg import sql

from convsync.db import connect
from convsync.errors import ConvsyncError
from convsync.kafka import make_consumer, make_producer
from convsync.settings import Settings
from schemas.envelope import Envelope


@dataclass(frozen=True, slots=True)
class SmokeResult:
    """What the smoke run saw."""

    produced: int
    read_back: int
    pages: int
    partitions_used: int
    order_kept: bool
    migrations: int
    seconds: float


def _sample(page_id: str, psid: str, n: int, run: str) -> Envelope:
    mid = f"m_smoke_{run}_{page_id}_{n}"
    return Envelope.build(
        kind="message",
        page_id=page_id,
        psid=psid,
        occurred_at=int(time.time() * 1000) + n,
        source="webhook",
        direction="inbound",
        mid=mid,
        text=f"smoke {n}",
        raw={
            "sender": {"id": psid},
            "recipient": {"id": page_id},
            "message": {"mid": mid, "text": f"smoke {n}"},
        },
    )


def run_smoke(settings: Settings, *, pages: int = 3, per_page: int = 20) -> SmokeResult:
    """Produce envelopes for ``pages`` pages, read them back and check Postgres.

    Returns what was seen. Raises :class:`ConvsyncError` if anything is missing or out
    of order.
    """
    started = time.monotonic()
    run = uuid.uuid4().hex[:8]
    topic = settings.topic("events")
    producer = make_producer(settings)
    sent: dict[str, list[str]] = {}
    where: dict[str, tuple[int, int]] = {}
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, msg: object) -> None:
        if err is not None:
            errors.append(str(err))
            return
        where[msg.value().decode()] = (msg.partition(), msg.offset())  # type: ignore[attr-defined]

    for p in range(pages):
        page_id = f"smoke-{run}-{p}"
        for n in range(per_page):
            env = _sample(page_id, f"user-{n % 3}", n, run)
            value = env.to_bytes()
            sent.setdefault(page_id, []).append(value.decode())
            producer.produce(topic, key=page_id.encode(), value=value, on_delivery=on_delivery)
    remaining = producer.flush(30)
    if remaining or errors:
        raise ConvsyncError(f"Kafka did not confirm {remaining} records: {errors[:3]}")

    # Read back exactly the offsets we wrote, straight from the partitions.
    consumer = make_consumer(settings, f"convsync-smoke-{run}")
    got: dict[str, list[str]] = {}
    try:
        by_partition: dict[int, list[int]] = {}
        for part, off in where.values():
            by_partition.setdefault(part, []).append(off)
        consumer.assign([TopicPartition(topic, p, min(offs)) for p, offs in by_partition.items()])
        wanted = len(where)
        seen = 0
        deadline = time.monotonic() + 30
        last = {p: max(offs) for p, offs in by_partition.items()}
        done: set[int] = set()
        while len(done) < len(last) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            got_part, got_off = msg.partition(), msg.offset()
            if got_part is None or got_off is None:
                continue
            if got_off >= last[got_part]:
                done.add(got_part)
            key = (msg.key() or b"").decode()
            if key in sent:
                got.setdefault(key, []).append((msg.value() or b"").decode())
                seen += 1
        if seen < wanted:
            raise ConvsyncError(f"read back {seen} of {wanted} records")
    finally:
        consumer.close()

    order_kept = all(got.get(k) == v for k, v in sent.items())
    partitions_per_page = {k: {where[v][0] for v in vals} for k, vals in sent.items()}
    if not order_kept or any(len(s) != 1 for s in partitions_per_page.values()):
        raise ConvsyncError("a page's records came back out of order or on two partitions")
    with connect(settings) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.schema_migrations").format(
                sql.Identifier(settings.db_schema)
            )
        ).fetchone()
    migrations = int(str(row[0])) if row else 0
    if migrations == 0:
        raise ConvsyncError("no migrations applied; run `convsync migrate`")
    return SmokeResult(
        produced=len(where),
        read_back=seen,
        pages=pages,
        partitions_used=len({where[v][0] for vals in sent.values() for v in vals}),
        order_kept=order_kept,
        migrations=migrations,
        seconds=time.monotonic() - started,
    )
