"""One crawl step: fetch ONE Graph API page and return its envelopes and the continuation."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from yarl import URL

from convsync.errors import RetryableError
from producers.crawler.contacts import Contact, participant_contacts, platform_of
from producers.crawler.exceptions import CrawlFailedError
from producers.crawler.parse import conversation_todo, message_envelope, message_time
from producers.crawler.urls import GRAPH_ID, GraphOrigin, strip_secrets
from schemas.crawl import CrawlCounters, CrawlRequest, CrawlStep
from schemas.envelope import Envelope

CONVERSATION_FIELDS: Final = "id,updated_time,participants,message_count"
# One Message node for both platforms: ``shares`` (shared links and posts), ``sticker``
# (its image URL) and ``tags`` are absent where a message has none.
MESSAGE_FIELDS: Final = "id,created_time,from,to,message,attachments,shares,sticker,tags"


@dataclass(slots=True)
class FetchStats:
    """What fetching one Graph page cost: calls, retries, throttle pauses."""

    api_calls: int = 0
    retries: int = 0
    throttle_waits: int = 0
    throttle_seconds: float = 0.0


Fetch = Callable[[str], Awaitable[tuple[dict[str, Any], FetchStats]]]


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """The envelopes one step produced and where the crawl stands after it, and the
    names its conversations listing gave (``contacts``, recorded by the worker)."""

    envelopes: list[Envelope]
    step: CrawlStep
    done: bool
    contacts: list[Contact] = field(default_factory=list)


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


def record_refusal(record: CrawlRequest, origin: GraphOrigin) -> str | None:
    """Return why ``record`` must not run (a URL or id a token may not go to), or None.

    Every URL a step would fetch is checked before anything is sent: the stored cursors
    (the conversations of the page, the messages of the first queued conversation) and
    the ids that will be put in URL paths (the page id, every queued thread id).
    """
    if not GRAPH_ID.fullmatch(record.page_id):
        return f"its page id {record.page_id[:80]!r} is not a Graph id"
    if record.via_page is not None and not GRAPH_ID.fullmatch(record.via_page):
        return f"its linked page id {record.via_page[:80]!r} is not a Graph id"
    step = record.step
    if step is None:
        return None
    for todo in step.queue:
        if not GRAPH_ID.fullmatch(todo.thread_id):
            return f"its queue holds {todo.thread_id[:80]!r}, which is not a Graph thread id"
    if step.conversations_url is not None:
        reason = origin.refusal(
            step.conversations_url, node=record.graph_page, edge="conversations"
        )
        if reason is not None:
            return f"its conversations_url may not receive a page token: {reason}"
        reason = platform_refusal(step.conversations_url, record.platform)
        if reason is not None:
            return f"its conversations_url {reason}"
    if step.messages_url is not None:
        if not step.queue:
            return "it has a messages_url but no queued conversation"
        reason = origin.refusal(step.messages_url, node=step.queue[0].thread_id, edge="messages")
        if reason is not None:
            return f"its messages_url may not receive a page token: {reason}"
    return None


def platform_refusal(url: str, platform: str) -> str | None:
    """Return why a conversations URL does not list ``platform`` (None: it does).

    ``/{page}/conversations`` lists one platform's inbox; a cursor naming the other would
    store one inbox's conversations as the other's. Without the parameter Graph lists
    Messenger's.
    """
    try:
        got = URL(url, encoded=True).query.getall("platform", [])
    except ValueError:
        return "has an unreadable query"
    if got != [platform] and not (platform == "messenger" and not got):
        return f"lists platform {got!r}, not [{platform!r}]"
    return None


def _data_and_next(
    body: dict[str, Any], url: str, origin: GraphOrigin, *, node: str, edge: str
) -> tuple[list[Any], str | None]:
    """Return the items of a Graph page and its next URL (None: this was the last page).

    A next page that cannot be fetched never reads as the end: a malformed ``paging``
    is a bad response (retried), and a ``paging.next`` outside the Graph origin, or equal
    to the page just read, fails the crawl.
    """
    data = body.get("data")
    if not isinstance(data, list):
        raise RetryableError("Graph API response has no data list")
    paging = body.get("paging")
    if paging is None:
        return data, None
    if not isinstance(paging, dict):
        raise RetryableError("Graph API response has a paging that is not an object")
    nxt = paging.get("next")
    if nxt is None:
        return data, None
    reason = origin.refusal(nxt, node=node, edge=edge)
    if reason is not None:
        raise CrawlFailedError(
            f"the Graph response for /{node}/{edge} has a paging.next that is refused"
            f" ({reason}); no request was sent to it, the crawl stops here"
        )
    nxt = strip_secrets(nxt)
    if nxt == strip_secrets(url):
        # Following it would read the same page for ever; ending here would drop the rest.
        raise CrawlFailedError(
            f"the Graph response for /{node}/{edge} names the page just read as its next"
            " page; the rest of the listing cannot be reached"
        )
    return data, nxt


async def run_step(
    record: CrawlRequest,
    *,
    fetch: Fetch,
    origin: GraphOrigin,
    conversations_limit: int,
    messages_limit: int,
) -> StepOutcome:
    """Run the step ``record`` stands at: one Graph call, then the new position.

    Returns the outcome (``done`` when nothing is left). Raises what ``fetch`` raises,
    :class:`RetryableError` for a response without a ``data`` list or with a malformed
    ``paging``, and :class:`CrawlFailedError` when the record or the response points
    where a page token may not go (nothing is sent there; see :func:`record_refusal`).
    """
    refused = record_refusal(record, origin)
    if refused is not None:
        raise CrawlFailedError(f"crawl record refused: {refused}; no request was sent")
    step = record.step or CrawlStep(started_at=int(time.time() * 1000))
    counters = step.counters
    tally = _Tally(counters.model_dump(exclude={"skipped"}), dict(counters.skipped))
    queue = list(step.queue)
    conversations_url = step.conversations_url
    exhausted = step.conversations_exhausted
    messages_url = step.messages_url
    envelopes: list[Envelope] = []
    contacts: list[Contact] = []
    since = record.since

    def account(stats: FetchStats) -> None:
        tally.add("api_calls", stats.api_calls)
        tally.add("retries", stats.retries)
        tally.add("throttle_waits", stats.throttle_waits)
        tally.add("throttle_seconds", stats.throttle_seconds)

    if queue:
        todo = queue[0]
        url = messages_url or origin.url(
            todo.thread_id, "messages", {"fields": MESSAGE_FIELDS, "limit": messages_limit}
        )
        body, stats = await fetch(url)
        account(stats)
        data, nxt = _data_and_next(body, url, origin, node=todo.thread_id, edge="messages")
        reached_old = False
        for item in data:
            # Messages come newest first: an incremental crawl stops at the first old one.
            # (Reading the time validates the item once more: only an incremental crawl needs it.)
            created = message_time(item) if since is not None else None
            if since is not None and created is not None and created < since:
                reached_old = True
                break
            env = message_envelope(
                item, page_id=record.page_id, todo=todo, platform=record.platform
            )
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
        # An Instagram account's conversations are listed by its linked page.
        node = record.graph_page
        url = conversations_url or origin.url(
            node,
            "conversations",
            {
                "platform": record.platform,
                "fields": CONVERSATION_FIELDS,
                "limit": conversations_limit,
            },
        )
        body, stats = await fetch(url)
        account(stats)
        data, nxt = _data_and_next(body, url, origin, node=node, edge="conversations")
        if nxt is not None and (wrong := platform_refusal(nxt, record.platform)) is not None:
            raise CrawlFailedError(
                f"the Graph response for /{node}/conversations has a paging.next that {wrong};"
                " the crawl stops here"
            )
        reached_old = False
        for item in data:
            todo_or_reason = conversation_todo(item, record.page_id, also_not=record.via_page)
            if isinstance(todo_or_reason, str):
                tally.skip(todo_or_reason)
                continue
            # Conversations come newest updated first and have no time filter.
            if since is not None and todo_or_reason.updated_at < since:
                reached_old = True
                break
            queue.append(todo_or_reason)
            contacts.extend(
                participant_contacts(
                    item, record.page_id, platform=platform_of(getattr(record, "platform", None))
                )
            )
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
    return StepOutcome(envelopes, new_step, done, contacts)
