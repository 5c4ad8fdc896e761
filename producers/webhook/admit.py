"""The admission of one webhook body: signature, parse, map, serialize; no I/O."""

from __future__ import annotations

from typing import Final

import msgspec

from producers.webhook.mapping import ItemDefectError, defect_item, map_item
from producers.webhook.payload import BadBodyError, parse_body
from producers.webhook.publisher import Record
from producers.webhook.signature import Verdict, verify

# entry[] fields Meta sends besides messaging/standby (page feed changes, handover hops).
_ENTRY_FIELDS: Final = frozenset({"changes", "hop_context"})
# librdkafka counts a record's key and framing (~40 bytes) against message.max.bytes, not
# only its value: a value that passed a value-only check failed in produce() (a 503, so
# Meta retried the same body forever) once within ~50 bytes of the limit.
RECORD_OVERHEAD: Final = 512


class Accepted(msgspec.Struct, frozen=True, gc=False):
    """A body to publish: its records, the kind of each, and entry fields it ignored."""

    kinds: list[str]
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
) -> Accepted | Refused:
    """Decide what ``body`` (with its signature headers) becomes; never raises for bad input.

    Every refusal is decided before anything could be published: a body is accepted
    whole or not at all.
    """
    # 1. Signature over the exact bytes; nothing unauthenticated is parsed.
    verdict = verify(secret, body, signature, legacy=legacy)
    if verdict != "ok":
        return Refused(403, f"signature {verdict}", verdict)
    # 2. Parse, map and serialize every item, keyed by its page.
    try:
        entries = parse_body(body)
    except BadBodyError as e:
        return Refused(400, e.reason)
    records: list[Record] = []
    kinds: list[str] = []
    ignored: list[str] = []
    limit = max_record_bytes - RECORD_OVERHEAD
    for entry in entries:
        key = entry.id.encode()
        for channel, items in (("messaging", entry.messaging), ("standby", entry.standby)):
            for item in items:
                try:
                    env = map_item(entry.id, entry.time, item, channel, entry.platform)
                except ItemDefectError as e:
                    # No dead-letter path here: kept as unknown under a key of its own.
                    env = defect_item(entry.id, entry.time, item, channel, entry.platform, e)
                value = env.to_bytes()
                # 3. One oversized event refuses the body.
                if len(key) + len(value) > limit:
                    detail = f"{env.kind} event of {len(value)} bytes"
                    return Refused(413, "event too large", detail=detail)
                records.append((key, value))
                kinds.append(env.kind)
        if entry.extra:
            # Body keys are not trusted as label values: unbounded series otherwise.
            ignored += [field if field in _ENTRY_FIELDS else "other" for field in entry.extra]
    return Accepted(kinds, records, ignored)
