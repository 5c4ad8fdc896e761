"""The admission of one webhook body: signature, parse, split by page; no I/O.

An accepted body becomes one delivery per ``entry[]`` element (:mod:`schemas.delivery`),
keyed by the entry's page id; the mapper turns deliveries into events
(:mod:`producers.webhook.deliveries`).
"""

from __future__ import annotations

from typing import Final

import msgspec
import orjson

from producers.webhook.payload import BadBodyError, decode_body, page_body_of
from producers.webhook.publisher import Record
from producers.webhook.signature import Verdict, verify
from schemas.delivery import encode_delivery

# entry[] fields Meta sends besides messaging/standby (page feed changes, handover hops).
_ENTRY_FIELDS: Final = frozenset({"changes", "hop_context"})
# librdkafka counts a record's key and framing (~40 bytes) against message.max.bytes, not
# only its value: a value that passed a value-only check failed in produce() (a 503, so
# Meta retried the same body forever) once within ~50 bytes of the limit.
RECORD_OVERHEAD: Final = 512


class Accepted(msgspec.Struct, frozen=True, gc=False):
    """A body to publish: one delivery record per entry, the platform of each, and the
    entry fields the mapping ignores (counted)."""

    platforms: list[str]
    records: list[Record]
    ignored: list[str]


class Refused(msgspec.Struct, frozen=True, gc=False):
    """A body to refuse with ``status`` (400, 403 or 413): nothing of it is published.

    ``reason`` is for the response, ``detail`` (when set) for the log.
    """

    status: int
    reason: str
    verdict: Verdict | None = None
    detail: str = ""


def admit(
    secret: bytes,
    body: bytes,
    signature: str | None,
    *,
    legacy: str | None = None,
    max_record_bytes: int,
    received_at: int = 0,
) -> Accepted | Refused:
    """Decide what ``body`` (with its signature headers) becomes; never raises for bad input.

    Every refusal is decided before anything could be published: a body is accepted
    whole or not at all. ``received_at`` (ms) goes into every delivery.
    """
    # 1. Signature over the exact bytes; nothing unauthenticated is parsed.
    verdict = verify(secret, body, signature, legacy=legacy)
    if verdict != "ok":
        return Refused(403, f"signature {verdict}", verdict)
    # 2. Parse and check every entry as the mapper will read it, then split by page.
    try:
        decoded = decode_body(body)
        entries = page_body_of(decoded)
    except BadBodyError as e:
        return Refused(400, e.reason)
    obj = decoded["object"]
    records: list[Record] = []
    platforms: list[str] = []
    ignored: list[str] = []
    limit = max_record_bytes - RECORD_OVERHEAD
    for entry, raw in zip(entries, decoded["entry"], strict=True):
        key = entry.id.encode()
        value = encode_delivery(obj, received_at, orjson.dumps(raw))
        # 3. One oversized entry refuses the body (only a body near the limit has one).
        if len(key) + len(value) > limit:
            return Refused(413, "entry too large", detail=f"entry of {len(value)} bytes")
        records.append((key, value))
        platforms.append(entry.platform)
        if entry.extra:
            # Body keys are not trusted as label values: unbounded series otherwise.
            ignored += [field if field in _ENTRY_FIELDS else "other" for field in entry.extra]
    return Accepted(platforms, records, ignored)
