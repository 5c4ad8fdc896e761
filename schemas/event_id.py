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
unsend         ``mid`` of the message taken back (Instagram's ``is_deleted``): once per
               message, whoever reports it
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

from collections.abc import Mapping
from hashlib import sha256
from typing import Any, Final

import orjson

from schemas.kinds import EventKind

ID_PREFIX: Final = "ev1_"

# Fields that say where an item was routed, not what it is; excluded from detail hashes.
ROUTING_FIELDS: Final = frozenset({"sender", "recipient", "timestamp"})
_SORTED: Final = orjson.OPT_SORT_KEYS


def canonical_json(value: Any) -> bytes:
    """Return ``value`` as JSON bytes with sorted keys and no whitespace."""
    return orjson.dumps(value, option=_SORTED)


def detail_digest(item: Mapping[str, Any]) -> str:
    """Return the sha256 hex of an item's canonical JSON, routing fields excluded."""
    body = {k: v for k, v in item.items() if k not in ROUTING_FIELDS}
    return sha256(orjson.dumps(body, option=_SORTED)).hexdigest()


def identity(
    kind: EventKind,
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
    page = str(page_id)
    if kind == "message" or kind == "unsend":
        if not mid:
            raise _missing(kind, "mid")
        return [kind, page, mid]
    if kind == "delivery" or kind == "read":
        if not psid or watermark is None:
            raise _missing(kind, "watermark" if psid else "psid")
        return [kind, page, psid, watermark]
    if kind == "edit":
        if not mid:
            raise _missing(kind, "mid")
        return [kind, page, mid, detail]
    if kind == "reaction":
        if not psid or not mid or occurred_at is None:
            raise _missing(kind, "psid" if not psid else "mid" if not mid else "occurred_at")
        return [kind, page, psid, mid, detail, occurred_at]
    if kind == "postback" and mid:
        return [kind, page, mid]
    if not psid or occurred_at is None:
        raise _missing(kind, "occurred_at" if psid else "psid")
    return [kind, page, psid, occurred_at, detail]


def _missing(kind: str, name: str) -> ValueError:
    return ValueError(f"event id for kind {kind!r} needs {name}")


def make_event_id(
    kind: EventKind,
    page_id: str,
    psid: str,
    mid: str | None = None,
    watermark: int | None = None,
    occurred_at: int | None = None,
    detail: str | None = None,
) -> str:
    """Return the deterministic id of a fact. Raises ``ValueError`` on missing fields."""
    ident = identity(kind, page_id, psid, mid, watermark, occurred_at, detail)
    return ID_PREFIX + sha256(orjson.dumps(ident, option=_SORTED)).hexdigest()[:32]
