"""One crawl step: fetch ONE Graph API page and return its envelopes and the continuation."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from convsync.errors import RetryableError
from producers.crawler.graph import strip_token
from producers.crawler.parse import conversation_todo, message_envelope, message_time
from schemas.crawl import CrawlCounters, CrawlRequest, CrawlStep
from schemas.envelope import Envelope

CONVERSATION_FIELDS: Final = "id,updated_time,participants,message_count"
MESSAGE_FIELDS: Final = "id,created_time,from,to,message,attachments,sticker,tags"


@dataclass(slots=True)
class FetchStats:
    """What fetching one Graph page cost: calls, retries, throttle pauses."""

    api_calls: int = 0
    retries: int = 0
    throttle_waits: int = 0
    throttle_seconds: float = 0.0


Fetch = Callable[[str], Awaitable[tuple[dict[str, Any], FetchStats]]]
UrlFor = Callable[[str, dict[str, str | int]], str]


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """The envelopes one step produced and where the crawl stands after it."""

    envelopes: list[Envelope]
    step: CrawlStep
    done: bool


@dataclass(slots=True)
class _Tally:
    values: dict[str, Any]
    skipped: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, n: int | float = 1) -> None:
        self.values[name] += n

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def freeze(self) -> CrawlCounters:
        return CrawlCounters(**{**self.values, "skipped": self.skipped})


def _data_and_next(body: dict[str, Any], url: str) -> tuple[list[Any], str | None]:
    data = body.get("data")
    if not isinstance(data, list):
        raise RetryableError("Graph API response has no data list")
    paging = body.get("paging")
    nxt = paging.get("next") if isinstance(paging, dict) else None
    if not isinstance(nxt, str) or not nxt:
        return data, None
    nxt = strip_token(nxt)
    # A next link that points back at the same page would loop forever.
    return data, (None if nxt == url else nxt)


async def run_step(
    record: CrawlRequest,
    *,
    fetch: Fetch,
    url_for: UrlFor,
    conversations_limit: int,
    messages_limit: int,
) -> StepOutcome:
    """Run the step ``record`` stands at: one Graph call, then the new position.

    Returns the outcome (``done`` when nothing is left). Raises what ``fetch`` raises
    and :class:`RetryableError` for a response without a ``data`` list.
    """
    step = record.step or CrawlStep(started_at=int(time.time() * 1000))
    counters = step.counters
    tally = _Tally(counters.model_dump(exclude={"skipped"}), dict(counters.skipped))
    queue = list(step.queue)
    conversations_url = step.conversations_url
    exhausted = step.conversations_exhausted
    messages_url = step.messages_url
    envelopes: list[Envelope] = []
    since = record.since

    def account(stats: FetchStats) -> None:
        tally.add("api_calls", stats.api_calls)
        tally.add("retries", stats.retries)
        tally.add("throttle_waits", stats.throttle_waits)
        tally.add("throttle_seconds", stats.throttle_seconds)

    if queue:
        todo = queue[0]
        url = messages_url or url_for(
            f"{todo.thread_id}/messages", {"fields": MESSAGE_FIELDS, "limit": messages_limit}
        )
        body, stats = await fetch(url)
        account(stats)
        data, nxt = _data_and_next(body, url)
        reached_old = False
        for item in data:
            # Messages come newest first: an incremental crawl stops at the first old one.
            # (Reading the time validates the item once more: only an incremental crawl needs it.)
            created = message_time(item) if since is not None else None
            if since is not None and created is not None and created < since:
                reached_old = True
                break
            env = message_envelope(item, page_id=record.page_id, todo=todo)
            if isinstance(env, str):
                tally.skip(env)
                continue
            envelopes.append(env)
            tally.add("messages")
            if not env.attrs.get("details", True):
                tally.add("messages_without_details")
        if nxt is not None and not reached_old:
            messages_url = nxt
        else:
            queue.pop(0)
            messages_url = None
            tally.add("conversations_done")
    elif not exhausted:
        url = conversations_url or url_for(
            f"{record.page_id}/conversations",
            {"platform": "messenger", "fields": CONVERSATION_FIELDS, "limit": conversations_limit},
        )
        body, stats = await fetch(url)
        account(stats)
        data, nxt = _data_and_next(body, url)
        reached_old = False
        for item in data:
            todo_or_reason = conversation_todo(item, record.page_id)
            if isinstance(todo_or_reason, str):
                tally.skip(todo_or_reason)
                continue
            # Conversations come newest updated first and have no time filter.
            if since is not None and todo_or_reason.updated_at < since:
                reached_old = True
                break
            queue.append(todo_or_reason)
            tally.add("conversations_listed")
            tally.add("messages_expected", todo_or_reason.message_count)
        conversations_url = nxt
        exhausted = nxt is None or reached_old
    done = not queue and exhausted
    new_step = CrawlStep(
        conversations_url=conversations_url,
        conversations_exhausted=exhausted,
        queue=tuple(queue),
        messages_url=messages_url,
        counters=tally.freeze(),
        started_at=step.started_at,
    )
    return StepOutcome(envelopes, new_step, done)
