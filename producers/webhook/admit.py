"""The admission of one webhook body: signature, parse, map, serialize; no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from producers.webhook.mapping import map_body
from producers.webhook.payload import BadBodyError, parse_body
from producers.webhook.publisher import Record
from producers.webhook.signature import Verdict, verify
from schemas.envelope import Envelope

# entry[] fields Meta sends besides messaging/standby (page feed changes, handover hops).
_ENTRY_FIELDS: Final = frozenset({"changes", "hop_context"})
# librdkafka counts a record's key and framing (~40 bytes) against message.max.bytes, not
# only its value: a value that passed a value-only check failed in produce() (a 503, so
# Meta retried the same body forever) once within ~50 bytes of the limit.
RECORD_OVERHEAD: Final = 512


@dataclass(frozen=True, slots=True)
class Accepted:
    """A body to publish: its envelopes, their records, and entry fields it ignored."""

    envelopes: list[Envelope]
    records: list[Record]
    ignored: list[str]


@dataclass(frozen=True, slots=True)
class Refused:
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
    # 2. Parse and map every item.
    try:
        page_body = parse_body(body)
    except BadBodyError as e:
        return Refused(400, e.reason)
    envelopes = map_body(page_body)
    # 3. Serialize; one oversized event refuses the body.
    records: list[Record] = []
    for env in envelopes:
        key, value = env.page_id.encode(), env.to_bytes()
        if len(key) + len(value) + RECORD_OVERHEAD > max_record_bytes:
            return Refused(413, "event too large", detail=f"{env.kind} event of {len(value)} bytes")
        records.append((key, value))
    # Body keys are not trusted as label values: unbounded series otherwise.
    ignored = [
        field if field in _ENTRY_FIELDS else "other"
        for entry in page_body.entry
        for field in entry.model_extra or {}
    ]
    return Accepted(envelopes, records, ignored)
