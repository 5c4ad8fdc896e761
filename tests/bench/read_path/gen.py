"""The rows of one chunk of the read-path data set, built the way the pipeline builds them.

Every event is an item of the simulator's webhook sender (``deploy/simulator``: Meta's
formats, 88-character mids, texts in several scripts, attachments, reply-to) mapped by
the gateway's own ``map_item``, then turned into its ``events`` row by the materializer's
``stage_row`` and ``event_row``. Some items arrive twice (Meta's retries, the crawler's
copy of a message with Graph's whole seconds and the thread id); the row kept is the
merge of its copies by ``schemas.copies.merged_rows``, as the materializer keeps it, and the
conversation row is the reference fold (``schemas.fold.apply``) of every copy. So the
rows look like real ones and the conversations agree with their events.
"""

from __future__ import annotations

import base64
import random
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from consumers.materializer.folding import as_timestamp, event_row
from consumers.materializer.rows import Position, stage_row
from consumers.materializer.statements import EVENT_COLUMNS as STORED_COLUMNS
from deploy.simulator.webhooks import WebhookSender
from producers.webhook.mapping import map_item
from schemas.copies import EventRow, merged_rows
from schemas.envelope import Envelope
from schemas.fold import ConversationState, apply
from tests.bench.read_path.shape import HISTORY_MS, NOW_MS, Shape
from tests.consumers.helpers import crawler_copy

TOPIC: Final = "convsync.events"
PARTITIONS: Final = 12
# The data set is loaded at the read path's schema version (before ``platform`` existed;
# every generated event is Messenger's, the later migration's default).
LOADED_COLUMNS: Final = tuple(c for c in STORED_COLUMNS if c != "platform")
EVENT_COLUMNS: Final = (*LOADED_COLUMNS, "inserted_at")
CONVERSATION_COLUMNS: Final = (
    "page_id", "psid", "thread_id", "first_message_at", "last_message_at", "message_count",
    "last_message_text", "last_message_event", "last_inbound_at", "last_outbound_at",
    "needs_reply", "read_watermark", "delivered_watermark", "version", "updated_at",
)  # fmt: skip
TAG_COLUMNS: Final = ("page_id", "psid", "tags", "version", "updated_at")
# Tags people set, and how often (6 % of conversations carry one or two).
TAGS: Final = ("needs_attention", "vip", "order_issue", "refund", "lead", "spam")
TAG_WEIGHTS: Final = (35, 20, 15, 10, 10, 10)
TAGGED: Final = 0.06
COPIES: Final = 0.08
OTHER_KINDS: Final = ("postback", "referral", "handover", "optin", "unknown")
# Mean gap between two events of a conversation: chatty, same day, slow.
GAPS_MS: Final = (60_000, 1_800_000, 21_600_000)


class FastSender(WebhookSender):
    """The simulator's sender with a quicker ``mid()`` of the same shape ("m_" and 86
    url-safe characters): the original draws the characters one by one, which was
    two thirds of the time of making an event."""

    def mid(self) -> str:
        return "m_" + base64.urlsafe_b64encode(self.rng.randbytes(66)).decode()[:86]


def partition_of(page_id: str) -> int:
    """A stable partition number for a page (the benchmark never reads it back)."""
    return zlib.crc32(page_id.encode()) % PARTITIONS


@dataclass
class ChunkRows:
    """The COPY rows of one chunk."""

    events: list[tuple[Any, ...]] = field(default_factory=list)
    conversations: list[tuple[Any, ...]] = field(default_factory=list)
    tags: list[tuple[Any, ...]] = field(default_factory=list)


def _kind(rng: random.Random, has_mids: bool) -> str:
    roll = rng.random()
    if roll < 0.34:
        return "message"
    if roll < 0.58:
        return "echo"
    if roll < 0.65:
        return "edit" if has_mids else "message"
    if roll < 0.71:
        return "reaction" if has_mids else "message"
    if roll < 0.82:
        return "read"
    if roll < 0.93:
        return "delivery"
    return rng.choice(OTHER_KINDS)


def _timeline(rng: random.Random, n: int, last_ms: int) -> list[int]:
    gap = rng.choice(GAPS_MS)
    times = [last_ms]
    for _ in range(n - 1):
        times.append(times[-1] - 1000 - int(rng.expovariate(1 / gap)))
    times.reverse()
    return times


def conversation_events(
    sender: WebhookSender, rng: random.Random, page_id: str, psid: str, n: int, last_ms: int
) -> list[Envelope]:
    """Return the copies of ``n`` distinct events of one conversation, in arrival order."""
    out: list[Envelope] = []
    seen: set[str] = set()
    mids: list[str] = []
    times = _timeline(rng, n, last_ms)
    while len(seen) < n:
        sender.clock = times[len(seen)] - 1
        kind = "message" if not seen else _kind(rng, bool(mids))
        if kind == "edit":
            item = sender.edit(page_id, psid, rng.choice(mids), num_edit=rng.randrange(1, 4))
        elif kind == "reaction":
            action = rng.choice(("react", "react", "unreact"))
            item = sender.reaction(page_id, psid, rng.choice(mids), action=action)
        else:
            item = sender.item(kind, page_id, psid)
        event = map_item(page_id, item.get("timestamp"), item, "messaging")
        if event.event_id in seen:
            continue  # the same fact drawn twice (an edit number again): draw another
        seen.add(event.event_id)
        if event.kind == "message" and event.mid:
            mids.append(event.mid)
        out.append(event)
        if rng.random() < COPIES:
            if event.kind == "message" and event.thread_id is None:
                out.append(crawler_copy(event, bare=rng.random() < 0.3))
            else:
                out.append(event)
    return out


def kept(copies: list[Envelope]) -> list[EventRow]:
    """The row the materializer keeps of each (event id, conversation): the merge of its
    copies."""
    return list(merged_rows(copies).values())


def stored_row(row: EventRow, position: Position, seq: int) -> tuple[Any, ...]:
    """The ``events`` row (``LOADED_COLUMNS`` order) of a merged row."""
    out = dict(zip(STORED_COLUMNS, event_row(stage_row(row.copy, position, seq)), strict=True))
    f = row.fields()
    out.update(
        occurred_at=as_timestamp(f["occurred_at"]),
        direction=f["direction"],
        text=f["text"],
        thread_id=f["thread_id"],
        num_edit=f["num_edit"],
        copy_digest=f["copy_digest"],
    )
    return tuple(out[c] for c in LOADED_COLUMNS)


def fold(page_id: str, psid: str, copies: list[Envelope]) -> ConversationState:
    """The reference fold of every copy."""
    state = ConversationState(page_id=page_id, psid=psid)
    seen: set[str] = set()
    for ev in copies:
        state = apply(state, ev, again=ev.event_id in seen)
        seen.add(ev.event_id)
    return state


def conversation_row(state: ConversationState, updated_at: datetime) -> tuple[Any, ...]:
    """The ``conversations`` row of a folded state (CONVERSATION_COLUMNS order)."""
    p = state.public()
    ts = as_timestamp
    last_event = state.last_message_key[1] if state.last_message_key else None
    return (
        p["page_id"], p["psid"], p["thread_id"], ts(p["first_message_at"]),
        ts(p["last_message_at"]), p["message_count"], p["last_message_text"], last_event,
        ts(p["last_inbound_at"]), ts(p["last_outbound_at"]), p["needs_reply"],
        ts(p["read_watermark"]), ts(p["delivered_watermark"]), 1, updated_at,
    )  # fmt: skip


def chunk_rows(shape: Shape, k: int) -> ChunkRows:
    """Return the rows of chunk ``k``; events in time order."""
    rng = random.Random(shape.seed * 1_000_003 + k)
    sender = FastSender(app_secret="read-path", seed=shape.seed * 7919 + k)
    out = ChunkRows()
    events: list[tuple[int, tuple[Any, ...]]] = []
    seq = 0
    for page, index, n in shape.chunk(k):
        page_id, psid = shape.page_id(page), shape.psid(page, index)
        last_ms = NOW_MS - int(HISTORY_MS * rng.random() ** 2)
        copies = conversation_events(sender, rng, page_id, psid, n, last_ms)
        partition = partition_of(page_id)
        for merged in kept(copies):
            ev, at = merged.copy, merged.merged.occurred_at
            delay = rng.randrange(50, 2000) if ev.source == "webhook" else rng.randrange(3_600_000)
            row = stored_row(merged, Position(TOPIC, partition, k * 10**7 + seq), seq)
            events.append((at, (*row, as_timestamp(at + delay))))
            seq += 1
        state = fold(page_id, psid, copies)
        updated = as_timestamp(max(ev.occurred_at for ev in copies) + 1000)
        out.conversations.append(conversation_row(state, updated))
        if rng.random() < TAGGED:
            tags = sorted(set(rng.choices(TAGS, TAG_WEIGHTS, k=1 + (rng.random() < 0.3))))
            out.tags.append((page_id, psid, tags, 1, updated))
    events.sort(key=lambda e: e[0])
    out.events = [row for _, row in events]
    return out
