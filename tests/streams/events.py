"""Realistic event sequences for the change-stream tests and benchmark."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

from confluent_kafka import Producer

from schemas.envelope import Envelope

# Five minutes ago, on a minute: faust expires statistics windows an hour behind the
# wall clock (not event time), 30 s after a worker starts, so windows of a fixed past
# date vanished from /stats/ mid-test on a slow machine.
T0 = (int(time.time()) // 60 - 5) * 60_000


def conversation_events(
    rng: random.Random, *, pages: int, users: int, messages: int
) -> list[Envelope]:
    """Return ``messages`` message events plus read/delivery/edit events, about in time
    order, with some webhook/crawler duplicates: the crawler copy carries the thread id,
    its time is truncated to the second, it may lack the direction and may come first."""
    out: list[Envelope] = []
    for n in range(messages):
        page = f"p{rng.randrange(pages)}"
        user = f"u{rng.randrange(users)}"
        t = T0 + n * 1_000 + rng.randrange(500)
        inbound = rng.random() < 0.6
        mid = f"m_{page}_{n}"
        out.append(
            Envelope.build(
                kind="message",
                page_id=page,
                psid=user,
                mid=mid,
                occurred_at=t,
                source="webhook",
                direction="inbound" if inbound else "outbound",
                text=f"text {n}",
                raw={"n": n},
            )
        )
        r = rng.random()
        if r < 0.1:
            # The crawler's copy: Graph's created_time has whole seconds (the webhook's
            # timestamp has ms), and a message read without details has no direction.
            # It can come first: a crawl running while the webhook is behind.
            crawled = Envelope.build(
                kind="message",
                page_id=page,
                psid=user,
                mid=mid,
                occurred_at=t // 1000 * 1000,
                source="crawler",
                direction=None if rng.random() < 0.3 else "inbound" if inbound else "outbound",
                text=f"text {n}",
                thread_id=f"t_{page}_{user}",
                raw={"n": n},
            )
            if rng.random() < 0.5:
                out.insert(len(out) - 1, crawled)
            else:
                out.append(crawled)
        elif r < 0.2:
            kind = "read" if rng.random() < 0.5 else "delivery"
            out.append(
                Envelope.build(
                    kind=kind,
                    page_id=page,
                    psid=user,
                    occurred_at=t + 10,
                    watermark=t,
                    source="webhook",
                    raw={"w": t},
                )
            )
        elif r < 0.25:
            out.append(
                Envelope.build(
                    kind="edit",
                    page_id=page,
                    psid=user,
                    mid=mid,
                    occurred_at=t + 20,
                    source="webhook",
                    text=f"edited {n}",
                    attrs={"num_edit": 1},
                    detail="1",
                    raw={"e": n},
                )
            )
        elif r < 0.3:
            out.append(out[-1])  # Meta's retry of the same webhook
    return out


def produce(producer: Producer, topic: str, events: list[Envelope]) -> None:
    """Produce ``events`` keyed by page id and wait until Kafka has them all."""
    for i, event in enumerate(events):
        producer.produce(topic, key=event.page_id.encode(), value=event.to_bytes())
        if i % 1000 == 0:
            producer.poll(0)
    left = producer.flush(60)
    assert left == 0, f"{left} events not delivered"


def chunks(events: list[Envelope], size: int) -> Iterator[list[Envelope]]:
    for i in range(0, len(events), size):
        yield events[i : i + size]
