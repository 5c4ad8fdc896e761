"""Shared pieces of the materializer tests: event sets, producing, reading the tables."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec
from psycopg import sql

from convsync.db import connect
from convsync.kafka import make_producer
from convsync.settings import Settings
from schemas.copies import merged_rows
from schemas.envelope import Envelope
from schemas.fold import project

CONV_COLUMNS = (
    "page_id",
    "psid",
    "thread_id",
    "first_message_at",
    "last_message_at",
    "message_count",
    "last_message_text",
    "last_inbound_at",
    "last_outbound_at",
    "needs_reply",
    "read_watermark",
    "delivered_watermark",
)
MS_COLUMNS = {
    "first_message_at",
    "last_message_at",
    "last_inbound_at",
    "last_outbound_at",
    "read_watermark",
    "delivered_watermark",
}


def random_events(
    rng: random.Random,
    *,
    pages: int,
    users: int,
    n: int,
    t0: int = 1_700_000_000_000,
    mid_prefix: str = "m",
) -> list[Envelope]:
    """Return ``n`` distinct-looking facts over ``pages`` x ``users`` conversations.

    Message ids are ``<mid_prefix><i>``: give a second set another prefix, or its
    messages are the first set's facts again (the same event ids).

    Some messages get a crawler's copy (:func:`crawler_copy`), appended at the end;
    edits and reactions may target mids whose message comes later or never.
    """
    out: list[Envelope] = []
    mids: list[tuple[str, str, str]] = []
    for i in range(n):
        page = f"p{rng.randrange(pages)}"
        psid = f"u{rng.randrange(users)}"
        roll = rng.random()
        t = t0 + rng.randrange(10_000_000)
        if roll < 0.6 or not mids:
            mid = f"{mid_prefix}{i}"
            mids.append((page, psid, mid))
            out.append(
                Envelope.build(
                    kind="message",
                    page_id=page,
                    psid=psid,
                    mid=mid,
                    occurred_at=t,
                    source=rng.choice(["webhook", "crawler"]),
                    direction=rng.choice(["inbound", "outbound"]),
                    text=rng.choice([None, f"text {i}", "ß ✓ \u00e9"]),
                    thread_id=rng.choice([None, None, f"t_{page}_{psid}"]),
                    raw={"i": i},
                )
            )
        elif roll < 0.72:
            page, psid, mid = rng.choice(mids)
            num = rng.randrange(1, 4)
            out.append(
                Envelope.build(
                    kind="edit",
                    page_id=page,
                    psid=psid,
                    mid=mid,
                    occurred_at=t,
                    source="webhook",
                    text=f"edit {num} of {mid}",
                    attrs={"num_edit": num},
                    detail=str(num),
                    raw={"i": i},
                )
            )
        elif roll < 0.8:
            page, psid, mid = rng.choice(mids)
            action = rng.choice(["react", "react", "unreact"])
            out.append(
                Envelope.build(
                    kind="reaction",
                    page_id=page,
                    psid=psid,
                    mid=mid,
                    occurred_at=t,
                    source="webhook",
                    direction="inbound",
                    attrs={"action": action, "emoji": "\u2764"},
                    detail=f"{action}:\u2764",
                    raw={"i": i},
                )
            )
        elif roll < 0.95:
            kind = rng.choice(["read", "delivery"])
            out.append(
                Envelope.build(
                    kind=kind,  # type: ignore[arg-type]
                    page_id=page,
                    psid=psid,
                    occurred_at=t,
                    watermark=t - rng.randrange(1000),
                    source="webhook",
                    raw={"i": i},
                )
            )
        else:
            out.append(
                Envelope.build(
                    kind="optin",
                    page_id=page,
                    psid=psid,
                    occurred_at=t,
                    source="webhook",
                    detail=str(i),
                    raw={"i": i},
                )
            )
    for ev in list(out):
        if ev.kind == "message" and ev.thread_id is None and rng.random() < 0.2:
            out.append(crawler_copy(ev, bare=rng.random() < 0.3))
    return out


def crawler_copy(event: Envelope, *, bare: bool) -> Envelope:
    """Return the crawler's copy of a message: the same event id, Graph's whole seconds,
    the thread id the webhook lacks, and when ``bare`` (past Graph's detail window) no
    sender, so no direction, and no text."""
    update: dict[str, Any] = {
        "occurred_at": event.occurred_at - event.occurred_at % 1000,
        "source": "crawler",
        "thread_id": f"t_{event.page_id}_{event.psid}",
    }
    if bare:
        update |= {"direction": None, "text": None}
    return msgspec.structs.replace(event, **update)


def conflicting_copy(rng: random.Random, event: Envelope) -> Envelope:
    """Return a copy of ``event`` (same event id) that differs as bad data can: another
    user, text, direction, time, thread id, edit number, source or payload."""
    options: dict[str, Any] = {
        "psid": f"u{rng.randrange(4)}",
        "text": rng.choice([None, "other", "\u00e9cho", f"text {rng.randrange(3)}"]),
        "direction": rng.choice([None, "inbound", "outbound"]),
        "occurred_at": event.occurred_at + rng.choice([-1500, -1, 0, 1, 999]),
        "thread_id": rng.choice([None, "t_x", "t_y"]),
        "attrs": rng.choice(
            [{}, {"num_edit": rng.randrange(5)}, {"emoji": "x", "action": "react"}]
        ),
        "source": rng.choice(["webhook", "crawler"]),
        "raw": {"conflict": rng.randrange(3)},
    }
    chosen = rng.sample(sorted(options), rng.randrange(1, 4))
    return msgspec.structs.replace(event, **{k: options[k] for k in chosen})


Row = dict[str, Any]
ROW_COLUMNS = (
    "kind", "mid", "occurred_at", "direction", "text", "watermark", "thread_id", "source",
    "attrs", "payload", "num_edit", "copy_digest",
)  # fmt: skip


def expected_rows(events: Iterable[Envelope]) -> dict[tuple[str, str], Row]:
    """Return what ``events`` should hold: the merged row of each (event id, psid)."""
    return {
        key: {c: row.fields()[c] for c in ROW_COLUMNS} for key, row in merged_rows(events).items()
    }


def stored_rows(settings: Settings, schema: str | None = None) -> dict[tuple[str, str], Row]:
    """Return the ``events`` rows as :func:`expected_rows` does (times in ms)."""
    query = sql.SQL(
        "SELECT event_id, psid, kind, mid, (extract(epoch FROM occurred_at) * 1000)::bigint,"
        " direction, text, (extract(epoch FROM watermark) * 1000)::bigint, thread_id, source,"
        " attrs, payload, num_edit::bigint, copy_digest FROM {}.events"
    ).format(sql.Identifier(schema or settings.db_schema))
    with connect(settings) as conn:
        rows = conn.execute(query).fetchall()
    return {(str(r[0]), str(r[1])): dict(zip(ROW_COLUMNS, r[2:], strict=True)) for r in rows}


def with_duplicates(rng: random.Random, events: Sequence[Envelope], share: float) -> list[Envelope]:
    """Return ``events`` plus re-deliveries of about ``share`` of them, shuffled."""
    out = list(events) + [e for e in events if rng.random() < share]
    rng.shuffle(out)
    return out


def produce(settings: Settings, events: Iterable[Envelope | bytes], *, key: bytes = b"") -> int:
    """Produce envelopes (keyed by page id) or raw bytes to <prefix>.events; return count."""
    producer = make_producer(settings, **{"linger.ms": 20, "batch.num.messages": 10000})
    topic = settings.topic("events")
    n = 0
    for ev in events:
        if isinstance(ev, bytes):
            value, k = ev, key or b"poison"
        else:
            value, k = ev.to_bytes(), ev.page_id.encode()
        while True:
            try:
                producer.produce(topic, value, key=k)
                break
            except BufferError:
                # The local queue is full (a slow broker on a busy machine): let it drain.
                producer.poll(0.1)
        n += 1
        if n % 10000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    return n


def expected(events: Iterable[Envelope]) -> dict[tuple[str, str], dict[str, Any]]:
    """Return the reference fold's public rows, keyed by conversation."""
    return {k: v.public() for k, v in project(events).items()}


def conversations(settings: Settings, schema: str | None = None) -> dict[tuple[str, str], Any]:
    """Return the conversations table as public rows (times in ms), keyed."""
    cols = sql.SQL(", ").join(
        sql.SQL("(extract(epoch FROM {c}) * 1000)::bigint").format(c=sql.Identifier(c))
        if c in MS_COLUMNS
        else sql.Identifier(c)
        for c in CONV_COLUMNS
    )
    query = sql.SQL("SELECT {} FROM {}.conversations").format(
        cols, sql.Identifier(schema or settings.db_schema)
    )
    with connect(settings) as conn:
        rows = conn.execute(query).fetchall()
    return {(str(r[0]), str(r[1])): dict(zip(CONV_COLUMNS, r, strict=True)) for r in rows}


def scalar(settings: Settings, query: str, *args: Any, schema: str | None = None) -> Any:
    """Return the first column of the first row of ``query`` (``{s}`` is the schema)."""
    q = sql.SQL(query).format(s=sql.Identifier(schema or settings.db_schema))
    with connect(settings) as conn:
        row = conn.execute(q, args).fetchone()
    return None if row is None else row[0]


def wait_for(check: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll ``check`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)
