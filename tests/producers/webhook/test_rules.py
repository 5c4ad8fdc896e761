"""The one definition of the mapping rules, through admission: every kind, any body.

The recorded decisions of real and odd bodies are checked byte for byte by
``test_corpus.py``; these tests check the rules' properties on generated bodies: every
record is a valid envelope of its page (read back with the envelope's full validation) that
writes the same bytes, its id follows :mod:`schemas.event_id`, and admission is
deterministic and never raises.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy.simulator.webhooks import INSTAGRAM_KINDS, KINDS, WebhookSender, signature
from producers.webhook.admit import Accepted, Refused, admit
from producers.webhook.deliveries import map_delivery
from producers.webhook.mapping import KINDS as TABLE
from schemas.envelope import Envelope
from schemas.event_id import detail_digest, make_event_id
from schemas.kinds import EVENT_KINDS
from tests.producers.webhook.helpers import SECRET, json_values, reshape

KEY = SECRET.encode()
LIMIT = 1_000_000


def _admit(raw: bytes) -> Accepted | Refused:
    return admit(KEY, raw, signature(SECRET, raw), max_record_bytes=LIMIT)


def _records_are_envelopes(decision: Accepted) -> list[Envelope]:
    """The events the mapper makes of the deliveries, every one checked."""
    envelopes = []
    for delivery_key, delivery in decision.records:
        mapped = map_delivery(delivery, max_record_bytes=LIMIT)
        assert mapped.failures == []
        for kind, (key, value) in zip(mapped.kinds, mapped.records, strict=True):
            env = Envelope.from_bytes(value)  # every field checked against its declaration
            assert env.to_bytes() == value
            assert key == env.page_id.encode() == delivery_key
            assert env.kind == kind
            envelopes.append(env)
    return envelopes


def _id_by_the_rule(env: Envelope) -> str:
    detail: str | None = None
    if env.kind == "reaction":
        detail = f"{env.attrs['action']}:{env.attrs['emoji']}"
    elif env.kind == "edit":
        detail = None if "num_edit" not in env.attrs else str(env.attrs["num_edit"])
    elif env.kind == "postback":
        payload = env.attrs.get("payload")
        detail = payload if isinstance(payload, str) else None
    elif env.kind in ("referral", "handover", "optin", "unknown"):
        detail = detail_digest(env.raw)
    return make_event_id(
        env.kind, env.page_id, env.psid, env.mid, env.watermark, env.occurred_at, detail
    )


def test_every_simulated_kind_maps_to_its_kind_by_the_rules() -> None:
    seen: Counter[str] = Counter()
    for seed in range(60):
        sender = WebhookSender(SECRET, seed=seed)
        pages = ["1", str(10**15 + seed)]
        for kind in sorted({*KINDS, *INSTAGRAM_KINDS}):
            raw = sender.batch(
                pages, items_per_page=1 + seed % 3, kinds=[kind], standby_share=(seed % 2) * 0.5
            ).raw
            decision = _admit(raw)
            assert isinstance(decision, Accepted)
            for env in _records_are_envelopes(decision):
                assert "parse_error" not in env.attrs, (kind, env.attrs)
                assert env.event_id == _id_by_the_rule(env)
                assert env.source == "webhook"
                seen[env.kind] += 1
            assert decision == _admit(raw)
    assert set(seen) == set(EVENT_KINDS)


def test_the_table_names_every_kind_but_unknown_once_per_field() -> None:
    assert len({row.key for row in TABLE}) == len(TABLE)
    # An unsend is a message item (``message.is_deleted``), read by the message row.
    assert {row.kind for row in TABLE} == set(EVENT_KINDS) - {"unknown", "unsend"}


json_value = json_values(["id", "mid", "payload", "url", "watermark"], max_leaves=6)
SEEDS = [WebhookSender(SECRET, seed=s).batch(["1", "22"], items_per_page=3).body for s in range(12)]


@st.composite
def reshaped(draw: st.DrawFn) -> bytes:
    """A real body with nested values replaced by random JSON, removed, or added."""
    keys = st.sampled_from(["mid", "text", "is_echo", "watermark", "id", "timestamp"])
    body = reshape(draw, draw(st.sampled_from(SEEDS)), json_value, keys)
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:  # an int beyond 64 bits: send it as Meta would
        return json.dumps(body).encode()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reshaped())
def test_any_reshaped_body_is_refused_or_maps_to_valid_envelopes(raw: bytes) -> None:
    decision = _admit(raw)
    assert decision == _admit(raw)
    if isinstance(decision, Refused):
        assert decision.status in (400, 413)
        return
    body: dict[str, Any] = orjson.loads(raw)
    items = [
        item
        for entry in body["entry"]
        for ch in ("messaging", "standby")
        for item in entry.get(ch, [])
    ]
    envelopes = _records_are_envelopes(decision)
    # One envelope per item, in order, each carrying its item as it came.
    assert [env.raw for env in envelopes] == items
    for env in envelopes:
        if "parse_error" not in env.attrs:
            assert env.event_id == _id_by_the_rule(env)
