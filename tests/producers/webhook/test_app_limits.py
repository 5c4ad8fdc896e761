"""The POSTs the gateway refuses, and its limits, against fresh topics on the real local
Kafka: bad signatures and shapes (403, 400), bodies over the size limit (413, by
Content-Length and chunked) or nested too deep (400), an entry Kafka would refuse (413)
and an event too large for the events topic (accepted, then a dead letter), 1 MiB exactly.

Accepted POSTs, the handshake and the other endpoints are in test_app.py.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from convsync.settings import Settings
from deploy.simulator.webhooks import WebhookSender, encode, page_body, signature
from producers.webhook.admit import RECORD_OVERHEAD, Accepted, admit
from producers.webhook.app import make_app
from producers.webhook.deliveries import MAX_EVENT_BYTES, map_delivery
from producers.webhook.mapping import map_body
from producers.webhook.payload import parse_body
from producers.webhook.settings import GatewaySettings
from producers.webhook.signature import HEADER
from tests.producers.webhook.helpers import (
    SECRET,
    read_events,
    read_records,
    signed,
    start_test_server,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

Client = TestClient[Any, Any]


# POST /webhook: refusals produce nothing ---------------------------------------------


async def test_refused_posts_produce_nothing(
    client: Client, gw_settings: Settings, sender: WebhookSender
) -> None:
    good = sender.batch(["1"], items_per_page=2)
    sha1 = "sha1=" + "0" * 40
    cases: list[tuple[bytes, dict[str, str], int]] = [
        (good.raw, {}, 403),
        (good.raw, {"X-Hub-Signature": sha1}, 403),
        (good.raw, {"X-Hub-Signature-256": "sha256=nothex"}, 403),
        (good.raw, {"X-Hub-Signature-256": signature("other", good.raw)}, 403),
        (good.raw + b" ", good.headers, 403),
        (b"not json", signed(b"not json"), 400),
        (b"[1,2]", signed(b"[1,2]"), 400),
        (b'{"object":"user","entry":[]}', signed(b'{"object":"user","entry":[]}'), 400),
        (b'{"object":"page"}', signed(b'{"object":"page"}'), 400),
        (b'{"object":"page","entry":{}}', signed(b'{"object":"page","entry":{}}'), 400),
        (
            b'{"object":"page","entry":[{"time":1}]}',
            signed(b'{"object":"page","entry":[{"time":1}]}'),
            400,
        ),
        (
            b'{"object":"page","entry":[{"id":"1","messaging":[1]}]}',
            signed(b'{"object":"page","entry":[{"id":"1","messaging":[1]}]}'),
            400,
        ),
    ]
    for raw, headers, status in cases:
        resp = await client.post("/webhook", data=raw, headers=headers)
        assert resp.status == status, (raw[:60], headers)
        if status == 400:
            reason = (await resp.json())["error"]
            assert 0 < len(reason) < 100
    assert read_events(gw_settings) == []


async def test_oversized_body_is_413_and_not_read(client: Client, gw_settings: Settings) -> None:
    item = {
        "sender": {"id": "2"},
        "recipient": {"id": "1"},
        "message": {"mid": "m", "text": "x" * (1024 * 1024)},
    }
    raw = encode(page_body([("1", [item], [])], time=1))
    resp = await client.post("/webhook", data=io.BytesIO(raw), headers=signed(raw))
    assert resp.status == 413

    async def chunks():  # type: ignore[no-untyped-def]
        for i in range(0, len(raw), 65536):
            yield raw[i : i + 65536]

    # Chunked (no Content-Length): refused as soon as the limit is crossed.
    resp = await client.post("/webhook", data=chunks(), headers=signed(raw))
    assert resp.status == 413
    assert read_events(gw_settings) == []


def nested_body(inner: bytes) -> bytes:
    """A page body whose one message item carries ``inner`` as ``message.nest``: the body
    is 6 levels deep above ``inner`` (body, entry list, entry, messaging, item, message)."""
    head = b'{"object":"page","entry":[{"id":"1","time":1,"messaging":[{"sender":{"id":"2"},'
    head += b'"recipient":{"id":"1"},"timestamp":5,"message":{"mid":"m.deep","nest":'
    return head + inner + b"}}]}]}"


def nest(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


async def test_bodies_nested_too_deep_are_400_and_produce_nothing(
    client: Client, gw_settings: Settings
) -> None:
    # 100 levels (the limit) is accepted, and its envelope is one the materializer reads.
    raw = nested_body(nest(100 - 6))
    resp = await client.post("/webhook", data=raw, headers=signed(raw))
    assert resp.status == 200
    [(_, envelope)] = read_events(gw_settings)
    assert envelope.kind == "message" and envelope.mid == "m.deep"
    # Deeper: refused whole. Until 2026-11-29, 101 was accepted (an envelope the
    # materializer dead-letters from ~200 levels on) and from ~254 on the request got a
    # 500 (orjson cannot write it), which Meta retries forever.
    for levels in (101, 199, 260, 1000):
        raw = nested_body(nest(levels - 6))
        resp = await client.post("/webhook", data=raw, headers=signed(raw))
        assert resp.status == 400, levels
        assert "nests deeper" in (await resp.json())["error"]
    unknown = b'{"object":"page","entry":[{"id":"1","time":1,"messaging":[{"odd":'
    raw = unknown + nest(300) + b"}]}]}"
    resp = await client.post("/webhook", data=raw, headers=signed(raw))
    assert resp.status == 400
    assert len(read_events(gw_settings)) == 1


def sized_body(record_bytes: int) -> bytes:
    """A signed-able body of one text message whose record (key + value) is exactly
    ``record_bytes`` long (the text is in the envelope twice, the pad once)."""

    def build(text: int, pad: int) -> tuple[bytes, int]:
        item = {
            "sender": {"id": "2"},
            "recipient": {"id": "1"},
            "timestamp": 7,
            "message": {"mid": "m.big", "text": "x" * text},
            "pad": "p" * pad,
        }
        raw = encode(page_body([("1", [item], [])], time=1))
        [env] = map_body(parse_body(raw))
        return raw, len(env.page_id.encode()) + len(env.to_bytes())

    _, base = build(0, 0)
    text = (record_bytes - base) // 2
    raw, size = build(text, record_bytes - base - 2 * text)
    assert size == record_bytes
    return raw


def sized_delivery(record_bytes: int) -> bytes:
    """A body of one entry whose delivery record (key + value) is exactly ``record_bytes``."""

    def build(pad: int) -> tuple[bytes, int]:
        item = {"sender": {"id": "2"}, "recipient": {"id": "1"}, "timestamp": 7, "pad": "p" * pad}
        raw = encode(page_body([("1", [item], [])], time=1))
        # A received_at of today's 13 digits, as the gateway's clock gives.
        decision = admit(
            SECRET.encode(),
            raw,
            signed(raw)[HEADER],
            max_record_bytes=10**9,
            received_at=1_800_000_000_000,
        )
        assert isinstance(decision, Accepted)
        [(key, value)] = decision.records
        return raw, len(key) + len(value)

    _, base = build(0)
    raw, size = build(record_bytes - base)
    assert size == record_bytes
    return raw


async def test_an_entry_kafka_would_refuse_is_413_and_nothing_is_produced(
    gw_settings: Settings,
) -> None:
    # A body limit above the deliveries topic's record limit (max.message.bytes), the
    # gateway's producer at that limit: the 413 answers before Kafka would refuse it.
    gateway = GatewaySettings(max_body_bytes=5 * 1024 * 1024, produce_timeout=5.0)
    limit = gateway.max_record_bytes
    server = await start_test_server(make_app(gw_settings, gateway))
    async with TestClient(server) as client:
        # librdkafka counts the key and ~40 bytes of framing against message.max.bytes:
        # 20 bytes under the limit, key and value together, cannot be produced. Until
        # 2026-11-29 this passed the value-only check and produce() failed: a 503.
        raw = sized_delivery(limit - 20)
        resp = await client.post("/webhook", data=io.BytesIO(raw), headers=signed(raw))
        assert resp.status == 413
        assert (await resp.json())["error"] == "entry too large"
        assert read_records(gw_settings, "deliveries") == []
        # With the margin left, the same entry is produced and confirmed.
        raw = sized_delivery(limit - RECORD_OVERHEAD)
        resp = await client.post("/webhook", data=io.BytesIO(raw), headers=signed(raw))
        assert resp.status == 200
    [(key, value)] = read_records(gw_settings, "deliveries")
    assert len(key) + len(value) == limit - RECORD_OVERHEAD


async def test_an_event_too_large_for_kafka_is_accepted_and_becomes_a_dead_letter(
    client: Client, gw_settings: Settings
) -> None:
    # No signed delivery is refused for its content: an event larger than Kafka takes
    # (its text is in the envelope twice) is accepted as a delivery, and the mapper
    # dead-letters it instead of producing it (the delivery stays on its topic).
    limit = MAX_EVENT_BYTES  # the events topic's
    raw = sized_body(limit - 20)
    resp = await client.post("/webhook", data=io.BytesIO(raw), headers=signed(raw))
    assert resp.status == 200
    [(_key, value)] = read_records(gw_settings, "deliveries")
    mapped = map_delivery(value, max_record_bytes=limit)
    assert mapped.records == []
    [failure] = mapped.failures
    assert failure.error_type == "EventTooLarge"
    assert "message event of" in failure.reason
    # At the margin it is an event.
    raw = sized_body(limit - RECORD_OVERHEAD)
    assert map_delivery(_delivery_of(raw), max_record_bytes=limit).failures == []


def _delivery_of(raw: bytes) -> bytes:
    decision = admit(SECRET.encode(), raw, signed(raw)[HEADER], max_record_bytes=10**9)
    assert isinstance(decision, Accepted)
    [(_key, value)] = decision.records
    return value


async def test_exactly_one_mib_is_accepted(client: Client, gw_settings: Settings) -> None:
    # A real body at the limit: many small items padding it to exactly 1 MiB.
    items = [
        {
            "sender": {"id": "2"},
            "recipient": {"id": "1"},
            "timestamp": i,
            "message": {"mid": f"m{i}", "text": "y" * 900},
        }
        for i in range(1000)
    ]
    body = page_body([("1", items, [])], time=1)
    raw = encode(body)
    pad = 1024 * 1024 - len(raw)
    assert 0 < pad < 200_000
    body["entry"][0]["pad"] = "z" * (pad - len(',"pad":""'))
    raw = encode(body)
    assert len(raw) == 1024 * 1024
    resp = await client.post("/webhook", data=io.BytesIO(raw), headers=signed(raw))
    assert resp.status == 200
    assert len(read_events(gw_settings)) == 1000
