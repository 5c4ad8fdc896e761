"""The fake webhook sender is itself checked against the formats the gateway accepts."""

from __future__ import annotations

import json

import orjson
import pytest

from deploy.simulator.instagram import ACCOUNT as INSTAGRAM_ACCOUNT
from deploy.simulator.instagram import InstagramTraffic
from deploy.simulator.webhooks import KINDS, WebhookSender, encode
from producers.webhook.mapping import map_body
from producers.webhook.payload import parse_body
from producers.webhook.signature import verify
from schemas.envelope import Envelope

SECRET = "sim-secret"
EXPECTED_KIND = {"echo": "message"}


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_maps_to_its_kind(kind: str) -> None:
    sender = WebhookSender(SECRET, seed=11)
    for style in ("meta", "utf8"):
        signed = sender.batch(["100", "200"], items_per_page=2, kinds=[kind], style=style)  # type: ignore[arg-type]
        assert verify(SECRET.encode(), signed.raw, signed.headers["X-Hub-Signature-256"]) == "ok"
        envelopes = map_body(parse_body(signed.raw))
        assert len(envelopes) == 4
        for env in envelopes:
            assert env.kind == EXPECTED_KIND.get(kind, kind)
            assert "parse_error" not in env.attrs
            assert Envelope.from_bytes(env.to_bytes()) == env


def test_meta_style_is_ascii_with_escaped_slashes_and_decodes_to_the_same_value() -> None:
    sender = WebhookSender(SECRET, seed=5)
    body = sender.batch(["1"], items_per_page=20, kinds=["message"]).body
    meta = encode(body, style="meta")
    utf8 = encode(body, style="utf8")
    assert meta.isascii()
    assert b"/" not in meta.replace(b"\\/", b"")
    assert json.loads(meta) == json.loads(utf8) == orjson.loads(meta) == body


def test_bodies_are_deterministic_per_seed_and_ids_unique() -> None:
    a = WebhookSender(SECRET, seed=9).batch(["1", "2"], items_per_page=30, standby_share=0.2)
    b = WebhookSender(SECRET, seed=9).batch(["1", "2"], items_per_page=30, standby_share=0.2)
    assert a.raw == b.raw
    ids = [e.event_id for e in map_body(parse_body(a.raw))]
    assert len(ids) == len(set(ids)) == 60
    assert any(entry.get("standby") for entry in a.body["entry"])


def test_instagram_traffic_maps_to_its_truth() -> None:
    sender = WebhookSender("s", seed=3)
    traffic = InstagramTraffic(sender)
    kinds: set[str] = set()
    for n in range(300):
        body = traffic.body(n)
        assert orjson.loads(body.signed.raw)["object"] == "instagram"
        envelopes = map_body(parse_body(body.signed.raw))
        assert {e.platform for e in envelopes} == {"instagram"}
        assert {e.page_id for e in envelopes} == {INSTAGRAM_ACCOUNT}
        kinds.update(e.kind for e in envelopes)
        made = {
            (e.page_id, e.psid, e.mid, e.text, e.direction)
            for e in envelopes
            if e.kind == "message"
        }
        assert made == set(body.messages)
        for e in envelopes:
            if e.kind == "read":
                assert body.reads == {(e.page_id, e.psid): e.watermark}
    assert kinds == {"message", "unsend", "reaction", "read"}
