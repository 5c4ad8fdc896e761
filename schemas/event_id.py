"""The deterministic event-id rule (DESIGN.md decision 3).

An event id names *what happened*, never *how it reached us*. The same fact seen in a
webhook, in Meta's retry of that webhook, in a differently batched webhook body, or in the
Graph API crawl must produce the same id, so the projection stores it once.

The rule
--------
``id = "ev1_" + hex(sha256(canonical_json(identity)))[:32]`` where ``identity`` is a JSON
array that starts with ``[kind, page_id]`` and continues per kind:

=============  =====================================================================
kind           rest of the identity
=============  =====================================================================
message        ``mid`` (Meta's message id is unique; the same for the webhook, its
               echo and the Graph API). Direction, text and source are *not* part of
               it: they describe the fact, they do not name it.
edit           ``mid`` of the edited message, edit number (``num_edit``)
reaction       ``psid``, target ``mid``, ``action`` (react/unreact), emoji, ``occurred_at``
delivery       ``psid``, ``watermark``
read           ``psid``, ``watermark``
postback       ``mid`` when Meta sends one; otherwise ``psid``, ``occurred_at``, payload
referral,      ``psid``, ``occurred_at``, and the sha256 of the canonical JSON of the
handover,      kind-specific detail (the source item minus routing fields), so two
optin,         different facts at the same millisecond still differ
unknown
=============  =====================================================================

Canonical JSON sorts object keys and uses no whitespace, so the order of fields in the
source payload never changes an id. Ids are versioned (``ev1_``): a future rule change
gets a new prefix instead of silently colliding with old ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

import orjson

from schemas.kinds import EventKind

ID_PREFIX: Final = "ev1_"

# Fields that say where an item was routed, not what it is; excluded from detail hashes.
ROUTING_FIELDS: Final = frozenset({"sender", "recipient", "timestamp"})


def canonical_json(value: Any) -> bytes:
    """Return ``value`` as JSON bytes with sorted keys and no whitespace."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def detail_digest(item: Mapping[str, Any]) -> str:
    """Return the sha256 hex of an item's canonical JSON, routing fields excluded."""
    body = {k: v for k, v in item.items() if k not in ROUTING_FIELDS}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def identity(
    kind: EventKind,
    *,
    page_id: str,
    psid: str,
    mid: str | None = None,
    watermark: int | None = None,
    occurred_at: int | None = None,
    detail: str | None = None,
) -> list[Any]:
    """Return the identity tuple of a fact (see the module docstring).

    Raises ``ValueError`` when a field that the kind's rule needs is missing.
    """
    if kind == "message":
        return [kind, str(page_id), _need(kind, "mid", mid)]
    if kind in ("delivery", "read"):
        return [kind, str(page_id), _need(kind, "psid", psid), _need(kind, "watermark", watermark)]
    if kind == "edit":
        return [kind, str(page_id), _need(kind, "mid", mid), detail]
    if kind == "reaction":
        return [
            kind,
            str(page_id),
            _need(kind, "psid", psid),
            _need(kind, "mid", mid),
            detail,
            _need(kind, "occurred_at", occurred_at),
        ]
    if kind == "postback" and mid:
        return [kind, str(page_id), mid]
    return [
        kind,
        str(page_id),
        _need(kind, "psid", psid),
        _need(kind, "occurred_at", occurred_at),
        detail,
    ]


def _need(kind: str, name: str, value: Any) -> Any:
    # A module function, not a closure: identity() runs for every event the gateway maps.
    if value is None or value == "":
        raise ValueError(f"event id for kind {kind!r} needs {name}")
    return value


def make_event_id(
    kind: EventKind,
    *,
    page_id: str,
    psid: str,
    mid: str | None = None,
    watermark: int | None = None,
    occurred_at: int | None = None,
    detail: str | None = None,
) -> str:
    """Return the deterministic id of a fact. Raises ``ValueError`` on missing fields."""
    ident = identity(
        kind,
        page_id=page_id,
        psid=psid,
        mid=mid,
        watermark=watermark,
        occurred_at=occurred_at,
        detail=detail,
    )
    return ID_PREFIX + hashlib.sha256(canonical_json(ident)).hexdigest()[:32]
