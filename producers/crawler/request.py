"""Ask for a crawl (a record on ``<prefix>.crawl``) and follow its progress in Postgres."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from confluent_kafka import KafkaException
from psycopg import sql

from convsync.db import connect
from convsync.errors import ConvsyncError, RetryableError
from convsync.kafka import make_producer
from convsync.settings import Settings
from producers.crawler.state import record_queued
from schemas.crawl import CrawlRequest


def new_request(page_id: str, *, full: bool, via_page: str | None = None) -> CrawlRequest:
    """Return a fresh crawl request for ``page_id``.

    With ``via_page``, ``page_id`` is an Instagram professional account and ``via_page``
    its linked Facebook Page: the crawl reads the account's Instagram conversations
    through that page (see :class:`CrawlRequest`).
    """
    return CrawlRequest(
        crawl_id=uuid.uuid4().hex[:12],
        page_id=page_id,
        platform="instagram" if via_page is not None else "messenger",
        via_page=via_page,
        full=full,
        requested_at=int(time.time() * 1000),
    )


def submit(settings: Settings, *records: CrawlRequest, timeout: float = 30.0) -> None:
    """Record the requests as queued and produce them, confirmed by Kafka.

    A request Kafka did not confirm has its ``queued`` row withdrawn again, so no later
    request joins a crawl that may never run. Raises :class:`RetryableError` when Kafka
    or Postgres cannot take them.
    """
    with connect(settings) as conn:
        try:
            for record in records:
                record_queued(conn, settings.db_schema, record)
        except psycopg.Error as e:
            raise RetryableError(f"cannot record the crawl request: {e}") from e
    producer = make_producer(settings, **{"linger.ms": 0})
    errors: list[str] = []
    confirmed: set[str] = set()

    def on_delivery(crawl_id: str) -> Callable[[Any, Any], None]:
        def done(err: Any, _msg: Any) -> None:
            if err is None:
                confirmed.add(crawl_id)
            else:
                errors.append(str(err))

        return done

    try:
        for record in records:
            producer.produce(
                settings.topic("crawl"),
                key=record.page_id.encode(),
                value=record.to_bytes(),
                on_delivery=on_delivery(record.crawl_id),
            )
        left = producer.flush(timeout)
    except KafkaException as e:
        failure = RetryableError(f"cannot produce the crawl request: {e}")
        failure.__cause__ = e
    else:
        if not (left or errors):
            return
        failure = RetryableError(f"crawl request not confirmed by Kafka: {errors or 'timeout'}")
    _withdraw(settings, [r.crawl_id for r in records if r.crawl_id not in confirmed])
    raise failure


_WITHDRAW = "DELETE FROM {schema}.crawl_history WHERE crawl_id = ANY(%s) AND status = 'queued'"


def _withdraw(settings: Settings, crawl_ids: list[str]) -> None:
    """Delete the ``queued`` rows of requests Kafka did not confirm.

    Such a record may still land later: the crawler's first write of it then inserts
    the row afresh. A row the crawler already moved on from ``queued`` is kept.
    Raises :class:`RetryableError` when Postgres cannot take the delete.
    """
    try:
        with connect(settings) as conn:
            conn.execute(
                sql.SQL(_WITHDRAW).format(schema=sql.Identifier(settings.db_schema)), (crawl_ids,)
            )
    except psycopg.Error as e:
        raise RetryableError(f"cannot withdraw the unconfirmed crawl request: {e}") from e


@dataclass(frozen=True, slots=True)
class CrawlView:
    """A crawl's row in ``crawl_history``."""

    crawl_id: str
    status: str
    joined_crawl_id: str | None
    conversations_done: int
    conversations_listed: int
    messages: int
    messages_expected: int
    api_calls: int
    throttle_waits: int
    skipped: int
    last_error: str | None

    @property
    def finished(self) -> bool:
        """Return True when the crawl will not change any more."""
        return self.status in ("done", "failed", "cancelled")


_VIEW = """
SELECT h.crawl_id, h.status, h.joined_crawl_id, h.conversations_done,
       COALESCE(s.conversations_listed, 0), h.messages_fetched,
       COALESCE(s.messages_expected, 0), h.api_calls, h.throttle_waits, h.skipped,
       h.last_error
FROM {schema}.crawl_history h
LEFT JOIN {schema}.crawl_state s ON s.page_id = h.page_id AND s.crawl_id = h.crawl_id
WHERE h.crawl_id = %s
"""


def read_view(conn: psycopg.Connection[Any], schema: str, crawl_id: str) -> CrawlView | None:
    """Return the history row of ``crawl_id``, or None."""
    row = conn.execute(sql.SQL(_VIEW).format(schema=sql.Identifier(schema)), (crawl_id,)).fetchone()
    if row is None:
        return None
    return CrawlView(*row)


def follow(
    settings: Settings,
    crawl_id: str,
    *,
    on_update: Callable[[CrawlView, str | None], None],
    timeout: float | None = None,
    interval: float = 0.25,
) -> CrawlView:
    """Poll until the crawl (or the crawl it joined) is done or failed; return its row.

    ``on_update(view, joined_from)`` is called on every poll. Raises
    :class:`ConvsyncError` on timeout.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    target = crawl_id
    joined_from: str | None = None
    with connect(settings) as conn:
        while True:
            view = read_view(conn, settings.db_schema, target)
            if view is not None and view.status == "joined" and view.joined_crawl_id:
                joined_from, target = target, view.joined_crawl_id
                continue
            if view is not None:
                on_update(view, joined_from)
                if view.finished:
                    return view
            if deadline is not None and time.monotonic() > deadline:
                raise ConvsyncError(f"crawl {crawl_id} not finished after {timeout:.0f}s")
            time.sleep(interval)


# Cancelling: the history row (and the page's crawl_state row, when it is that crawl's)
# say "cancelled" at once; the worker reads it before each step and stops the crawl
# (producers/crawler/_handler.py). A failed crawl can be cancelled too: its cursor is
# then not resumed and it is not retried. Done, joined and cancelled crawls stay as
# they are.
CANCELLABLE = ("queued", "running", "failed")
CANCEL_HISTORY = """
UPDATE {schema}.crawl_history SET status = 'cancelled', finished_at = now(), updated_at = now()
WHERE crawl_id = %s AND status = ANY(%s)
RETURNING page_id
"""
CANCEL_STATE = """
UPDATE {schema}.crawl_state SET status = 'cancelled', finished_at = now(), updated_at = now()
WHERE page_id = %s AND crawl_id = %s AND status = ANY(%s)
"""


def cancel(conn: psycopg.Connection[Any], schema: str, crawl_id: str) -> bool:
    """Cancel ``crawl_id`` (see :data:`CANCELLABLE`); return False when it was not
    cancellable (unknown, or finished already)."""
    s = sql.Identifier(schema)
    with conn.transaction():
        row = conn.execute(
            sql.SQL(CANCEL_HISTORY).format(schema=s), (crawl_id, list(CANCELLABLE))
        ).fetchone()
        if row is None:
            return False
        conn.execute(sql.SQL(CANCEL_STATE).format(schema=s), (row[0], crawl_id, list(CANCELLABLE)))
    return True
