"""The admission of one webhook body: signature, parse, map, serialize; no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Final

from producers.webhook import native
from producers.webhook.mapping import map_body, map_item
from producers.webhook.payload import BadBodyError, PageBody, decode_body, page_body_of
from producers.webhook.publisher import Record
from producers.webhook.signature import Verdict, verify

# entry[] fields Meta sends besides messaging/standby (page feed changes, handover hops).
_ENTRY_FIELDS: Final = frozenset({"changes", "hop_context"})
# librdkafka counts a record's key and framing (~40 bytes) against message.max.bytes, not
# only its value: a value that passed a value-only check failed in produce() (a 503, so
# Meta retried the same body forever) once within ~50 bytes of the limit.
RECORD_OVERHEAD: Final = 512
# The native mapper, or None: mapping.py alone (see native.py).
NATIVE: Final = native.load()


@dataclass(frozen=True, slots=True)
class Accepted:
    """A body to publish: its records, the kind of each, and entry fields it ignored."""

    kinds: list[str]
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
    mapper: ModuleType | None = NATIVE,
) -> Accepted | Refused:
    """Decide what ``body`` (with its signature headers) becomes; never raises for bad input.

    Every refusal is decided before anything could be published: a body is accepted
    whole or not at all. ``mapper`` is the native mapper (``None``: Python only); both
    give the same records.
    """
    # 1. Signature over the exact bytes; nothing unauthenticated is parsed.
    verdict = verify(secret, body, signature, legacy=legacy)
    if verdict != "ok":
        return Refused(403, f"signature {verdict}", verdict)
    # 2. Parse, map and serialize every item.
    try:
        decoded = decode_body(body)
        mapped = None if mapper is None else mapper.map_entries(decoded["entry"], map_item)
        if mapped is not None:
            records, kinds = mapped
            ignored: list[str] = []
        else:
            records, kinds, ignored = _map_in_python(page_body_of(decoded))
    except BadBodyError as e:
        return Refused(400, e.reason)
    # 3. One oversized event refuses the body.
    for (key, value), kind in zip(records, kinds, strict=True):
        if len(key) + len(value) + RECORD_OVERHEAD > max_record_bytes:
            return Refused(413, "event too large", detail=f"{kind} event of {len(value)} bytes")
    return Accepted(kinds, records, ignored)


def _map_in_python(page_body: PageBody) -> tuple[list[Record], list[str], list[str]]:
    envelopes = map_body(page_body)
    records = [(env.page_id.encode(), env.to_bytes()) for env in envelopes]
    # Body keys are not trusted as label values: unbounded series otherwise.
    ignored = [
        field if field in _ENTRY_FIELDS else "other"
        for entry in page_body.entry
        for field in entry.model_extra or {}
    ]
    return records, [env.kind for env in envelopes], ignored
