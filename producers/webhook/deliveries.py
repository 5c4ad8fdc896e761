"""A delivery -> its events: the mapping the mapper runs on every record, pure and replayable.

The one place a verified entry becomes envelopes (:func:`map_delivery`), used by the
mapper's consume-transform-produce loop (:mod:`producers.webhook.mapper`) and by the
golden corpus (``tests/corpus/golden.py``). The envelopes are ``mapping.map_item``'s, so
their bytes and ids are those the gateway published when it mapped in place.

Nothing is dropped: an item whose user would be the page itself becomes the ``unknown``
envelope that the materializer dead-letters (``attrs.defect``), as before; an item the
mapping fails on for any other reason, an event too large for Kafka, and a record that is
no delivery become *failures*, which the mapper writes to ``<prefix>.dlq`` naming the
delivery's position (the delivery itself stays on its topic, to be replayed once fixed).
"""

from __future__ import annotations

import logging
from typing import Final

import msgspec
import orjson

from producers.webhook.mapping import ItemDefectError, defect_item, map_item
from producers.webhook.payload import BadBodyError, page_body_of
from schemas.delivery import BadDeliveryError, decode_delivery

log = logging.getLogger(__name__)

# What Kafka adds to a record against message.max.bytes besides the value (the gateway's
# margin, ``admit.RECORD_OVERHEAD``).
RECORD_OVERHEAD: Final = 512
# librdkafka's default message.max.bytes, the events topic's record limit.
MAX_EVENT_BYTES: Final = 1_000_000


class Failure(msgspec.Struct, frozen=True, gc=False):
    """Why (part of) a delivery gave no event: for the dead-letter topic."""

    reason: str
    error_type: str


class Mapped(msgspec.Struct, gc=False):
    """What one delivery became: event records ``(key, value)`` in order, their kinds,
    and the failures to dead-letter."""

    records: list[tuple[bytes, bytes]]
    kinds: list[str]
    failures: list[Failure]


def map_delivery(value: bytes | None, *, max_record_bytes: int = MAX_EVENT_BYTES) -> Mapped:
    """Return the events of the delivery ``value``, in the order Meta sent the items.

    Never raises for bad input: what cannot be an event is a :class:`Failure`.
    """
    out = Mapped([], [], [])
    try:
        delivery = decode_delivery(value or b"")
        raw = orjson.loads(memoryview(delivery.entry))
        (entry,) = page_body_of({"object": delivery.object, "entry": [raw]})
    except (BadDeliveryError, BadBodyError, orjson.JSONDecodeError, ValueError) as e:
        out.failures.append(Failure(f"not a delivery: {_short(e)}", type(e).__name__))
        return out
    key = entry.id.encode()
    limit = max_record_bytes - RECORD_OVERHEAD
    for channel, items in (("messaging", entry.messaging), ("standby", entry.standby)):
        for n, item in enumerate(items):
            try:
                try:
                    env = map_item(entry.id, entry.time, item, channel, entry.platform)
                except ItemDefectError as e:
                    # Kept as unknown under a key of its own; the materializer dead-letters it.
                    env = defect_item(entry.id, entry.time, item, channel, entry.platform, e)
                event = env.to_bytes()
            except Exception as e:  # noqa: BLE001 - a mapping bug must not stop the page
                log.warning("page %s: %s[%d] not mapped: %s", entry.id, channel, n, _short(e))
                out.failures.append(
                    Failure(f"{channel}[{n}] not mapped: {_short(e)}", type(e).__name__)
                )
                continue
            if len(key) + len(event) > limit:
                out.failures.append(
                    Failure(
                        f"{channel}[{n}]: {env.kind} event of {len(event)} bytes is too large",
                        "EventTooLarge",
                    )
                )
                continue
            out.records.append((key, event))
            out.kinds.append(env.kind)
    return out


def _short(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]
