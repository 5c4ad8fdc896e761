"""A failed crawl keeps its cursor; the page's next crawl continues from it.

When a crawl fails (retries used up, throttled for too long, a record refused, no
token), its ``crawl_history`` row keeps where it stood: the step it could not run (the
conversations cursor, the queue of conversations still to read, the messages cursor of
the first), its incremental cutoff and whether it was full (column ``resume``). The
page's next crawl, asked for by anyone (the admin API, ``convsync crawl``, the
reconciler, the automatic retry of :mod:`producers.crawler.retry`), claims that cursor
when it starts (:func:`claim`) and runs from there: a crawl failing at 90 % costs ~10 %
more work on its resumption, not 100 % (docs/crawler.md, *Resuming a failed crawl*).

A single conversation must not hold a page's crawl back:

- a permanent Graph error reading its messages (other than a token or permission error,
  which is the page's, not the conversation's) skips it at once (:func:`skip_failed`);
- a conversation whose reading keeps failing (retries used up in
  ``CONVSYNC_CRAWL_CONVERSATION_FAILURES`` crawls in a row) is skipped when the next
  crawl resumes (:func:`claim`).

Either way it is counted (``skipped_reasons["conversation_failed"]``, the crawl's
``skipped_threads``, the ``convsync_crawler_steps{outcome="skipped_conversations"}``
metric) and logged, never silently dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from producers.crawler.exceptions import CrawlFailedError, GraphPermanentError
from producers.crawler.step import StepOutcome
from schemas.crawl import CrawlCounters, CrawlRequest, CrawlStep

log = logging.getLogger(__name__)

SKIP_REASON: Final = "conversation_failed"
# Thread ids of skipped conversations kept per crawl (the count has no bound).
MAX_SKIPPED_THREADS: Final = 100
# Graph codes that are about the page's token or permissions: every call of the page
# would fail alike, so they fail the crawl instead of skipping a conversation.
_TOKEN_CODES: Final = frozenset({102, 190, 10, *range(200, 300)})


def page_level(code: int | None) -> bool:
    """Return True when a permanent Graph error code is the page's (token, permission)."""
    return code is None or code in _TOKEN_CODES


def skip_head(step: CrawlStep) -> CrawlStep:
    """Return ``step`` with the first queued conversation skipped and counted."""
    counters = step.counters
    skipped = dict(counters.skipped)
    skipped[SKIP_REASON] = skipped.get(SKIP_REASON, 0) + 1
    return step.model_copy(
        update={
            "queue": step.queue[1:],
            "messages_url": None,
            "counters": counters.model_copy(update={"skipped": skipped}),
        }
    )


def skip_failed(record: CrawlRequest, error: CrawlFailedError) -> tuple[StepOutcome, str] | None:
    """Return the outcome of skipping the conversation ``record``'s step failed on, and
    its thread id, when ``error`` is a permanent error of that one conversation; None
    when the crawl must fail instead (a page-level error, or not reading messages)."""
    cause = error.__cause__
    step = record.step
    if not isinstance(cause, GraphPermanentError) or page_level(cause.code):
        return None
    if step is None or not step.queue:
        return None
    thread = step.queue[0].thread_id
    counters = step.counters.model_copy(update={"api_calls": step.counters.api_calls + 1})
    new = skip_head(step.model_copy(update={"counters": counters}))
    done = not new.queue and new.conversations_exhausted
    return StepOutcome([], new, done), thread


def resume_position(step: CrawlStep) -> CrawlStep:
    """Return a failed crawl's step as the start of the crawl resuming it: its progress
    (conversations and messages done and known, skips) and start time (the next
    incremental crawl's cutoff) carried over, its cost (calls, retries, throttle
    pauses) counted afresh for the new crawl."""
    c = step.counters
    fresh = CrawlCounters(
        conversations_listed=c.conversations_listed,
        conversations_done=c.conversations_done,
        messages_expected=c.messages_expected,
        messages=c.messages,
        messages_without_details=c.messages_without_details,
        skipped=dict(c.skipped),
    )
    return step.model_copy(update={"counters": fresh})


def resume_json(record: CrawlRequest) -> str:
    """Return what a failed crawl keeps to be resumed from (column ``resume``)."""
    step = record.step.model_dump(mode="json") if record.step is not None else None
    return orjson.dumps({"full": record.full, "since": record.since, "step": step}).decode()


def failed_thread(record: CrawlRequest) -> str | None:
    """Return the conversation a failed step of ``record`` was reading, if any."""
    step = record.step
    return step.queue[0].thread_id if step is not None and step.queue else None


# Run after the failed row is written (state.CrawlStateStore.project): the cursor, the
# conversation it failed on and in how many crawls in a row that one failed.
FAILED = """
UPDATE {schema}.crawl_history AS h SET
    resume = %(resume)s::jsonb, failed_thread = %(thread)s,
    thread_failures = CASE WHEN %(thread)s::text IS NULL THEN 0 ELSE 1 + COALESCE(
        (SELECT p.thread_failures FROM {schema}.crawl_history AS p
         WHERE p.crawl_id = h.resumed_from AND p.failed_thread = %(thread)s::text), 0) END
WHERE h.crawl_id = %(crawl_id)s AND h.status = 'failed'
"""

_LAST = """
SELECT crawl_id, status, resume, attempt, failed_thread, thread_failures, resumed_by
FROM {schema}.crawl_history
WHERE page_id = %s AND crawl_id <> %s AND status IN ('done', 'failed', 'cancelled')
ORDER BY requested_at DESC, crawl_id DESC LIMIT 1
FOR UPDATE
"""
_TAKEN = "UPDATE {schema}.crawl_history SET resumed_by = %s WHERE crawl_id = %s"
_MINE = """
INSERT INTO {schema}.crawl_history AS h (crawl_id, page_id, full_crawl, status, requested_at,
    resumed_from, attempt, started_at, skipped_threads)
VALUES (%(crawl_id)s, %(page_id)s, %(full)s, 'queued', to_timestamp(%(requested)s / 1000.0),
    %(from)s, %(attempt)s, now(), %(threads)s::jsonb)
ON CONFLICT (crawl_id) DO UPDATE SET
    resumed_from = EXCLUDED.resumed_from, attempt = EXCLUDED.attempt,
    started_at = COALESCE(h.started_at, EXCLUDED.started_at),
    skipped_threads = EXCLUDED.skipped_threads
"""


@dataclass(frozen=True, slots=True)
class Resumed:
    """A new crawl's record set to continue a failed one."""

    record: CrawlRequest
    resumed_from: str
    attempt: int
    skipped_thread: str | None


async def claim(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    record: CrawlRequest,
    *,
    conversation_failures: int,
    refusal: Callable[[CrawlRequest], str | None],
) -> Resumed | None:
    """Claim the cursor of the page's last crawl for ``record`` (a new crawl) when that
    crawl failed and nobody else resumed it; return the record to run, or None.

    Runs in ``conn``'s transaction (the caller's). Claiming again for the same crawl
    (its first step run a second time after a kill) gives the same answer. A full
    request does not resume an incremental crawl (it would miss what is older than the
    incremental cutoff); a cancelled or completed last crawl leaves nothing to resume;
    a cursor that ``refusal`` refuses (one naming another Graph version after
    ``CONVSYNC_GRAPH_URL`` changed, say) is not resumed: the crawl starts afresh.
    """
    s = sql.Identifier(schema)
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(sql.SQL(_LAST).format(schema=s), (record.page_id, record.crawl_id))
    last = await cur.fetchone()
    if last is None or last["status"] != "failed" or last["resume"] is None:
        return None
    if last["resumed_by"] not in (None, record.crawl_id):
        return None
    kept: dict[str, Any] = last["resume"]
    if record.full and not kept.get("full"):
        return None
    step = CrawlStep.model_validate(kept["step"]) if kept.get("step") is not None else None
    skipped: str | None = None
    if (
        step is not None
        and step.queue
        and last["failed_thread"] == step.queue[0].thread_id
        and int(last["thread_failures"]) >= conversation_failures
    ):
        skipped = step.queue[0].thread_id
        step = skip_head(step)
    resumed = record.model_copy(
        update={
            "full": bool(kept.get("full")),
            "since": kept.get("since"),
            "step": resume_position(step) if step is not None else None,
        }
    )
    refused = refusal(resumed)
    if refused is not None:
        log.warning(
            "crawl %s of page %s starts afresh: the cursor of failed crawl %s is refused (%s)",
            record.crawl_id,
            record.page_id,
            last["crawl_id"],
            refused,
        )
        return None
    attempt = int(last["attempt"]) + 1
    await conn.execute(sql.SQL(_TAKEN).format(schema=s), (record.crawl_id, last["crawl_id"]))
    await conn.execute(
        sql.SQL(_MINE).format(schema=s),
        {
            "crawl_id": record.crawl_id,
            "page_id": record.page_id,
            "full": record.full,
            "requested": record.requested_at,
            "from": last["crawl_id"],
            "attempt": attempt,
            "threads": orjson.dumps([skipped] if skipped else []).decode(),
        },
    )
    return Resumed(resumed, str(last["crawl_id"]), attempt, skipped)
