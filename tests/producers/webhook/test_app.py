"""Every endpoint rule of the gateway, against fresh topics on the real local Kafka."""

from __future__ import annotations

import io
import logging
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from convsync.settings import Settings
from deploy.simulator.webhooks import KINDS, WebhookSender, encode, page_body, signature
from producers.webhook.admit import RECORD_OVERHEAD, Accepted, admit
from producers.webhook.app import GATEWAY, make_app
from producers.webhook.deliveries import MAX_EVENT_BYTES, map_delivery
from producers.webhook.mapping import map_body
from producers.webhook.payload import parse_body
from producers.webhook.settings import GatewaySettings
from producers.webhook.signature import HEADER
from tests.producers.webhook.helpers import (
    SECRET,
    VERIFY_TOKEN,
    read_events,
    read_records,
    start_test_server,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

Client = TestClient[Any, Any]


def signed(raw: bytes) -> dict[str, str]:
    return {"X-Hub-Signature-256": signature(SECRET, raw), "Content-Type": "application/json"}


def expected_ids(raw: bytes) -> list[str]:
    return [e.event_id for e in map_body(parse_body(raw))]


def metrics_text(client: Client) -> str:
    """The Prometheus text of the app's metrics (served on the private listener)."""
    return client.server.app[GATEWAY].metrics.render().decode()  # type: ignore[union-attr]


# GET /webhook ------------------------------------------------------------------------


async def test_handshake_echoes_the_challenge(client: Client) -> None:
    params = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "15ab"}
    resp = await client.get("/webhook", params=params)
    assert resp.status == 200
    assert await resp.text() == "15ab"


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
        {"hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN},
        {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN + "é", "hub.challenge": "1"},
        {},
    ],
)
async def test_handshake_refusals(client: Client, params: dict[str, str]) -> None:
    resp = await client.get("/webhook", params=params)
    assert resp.status == 403


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


# POST /webhook: accepted -----------------------------------------------------------


async def test_every_kind_is_published_keyed_by_page(
    client: Client, gw_settings: Settings, sender: WebhookSender
) -> None:
    items = [sender.item(kind, "111", sender.psid()) for kind in KINDS]
    standby = [sender.message("111", sender.psid(), text="to the other app")]
    raw = encode(page_body([("111", items, standby)], time=1))
    resp = await client.post("/webhook", data=raw, headers=signed(raw))
    assert resp.status == 200
    assert await resp.text() == "EVENT_RECEIVED"
    got = read_events(gw_settings)
    assert sorted(e.event_id for _, e in got) == sorted(expected_ids(raw))
    assert {k for k, _ in got} == {b"111"}
    by_raw = {orjson.dumps(e.raw, option=orjson.OPT_SORT_KEYS): e for _, e in got}
    for item in [*items, *standby]:
        env = by_raw[orjson.dumps(item, option=orjson.OPT_SORT_KEYS)]
        assert env.source == "webhook"
    kinds = sorted(e.kind for _, e in got)
    assert kinds == sorted(
        [
            "message",
            "message",
            "message",
            "delivery",
            "read",
            "reaction",
            "edit",
            "postback",
            "referral",
            "handover",
            "optin",
            "unknown",
        ]
    )
    echo = next(e for _, e in got if e.attrs.get("is_echo"))
    assert (echo.direction, echo.psid) == ("outbound", items[1]["recipient"]["id"])


async def test_two_pages_in_one_post(
    client: Client, gw_settings: Settings, sender: WebhookSender
) -> None:
    body = sender.batch(["201", "202"], items_per_page=4, standby_share=0.3)
    resp = await client.post("/webhook", data=body.raw, headers=body.headers)
    assert resp.status == 200
    got = read_events(gw_settings)
    assert len(got) == 8
    for key, env in got:
        assert key == env.page_id.encode()
    assert sorted(e.page_id for _, e in got) == ["201"] * 4 + ["202"] * 4


async def test_same_body_twice_gives_the_same_ids(
    client: Client, gw_settings: Settings, sender: WebhookSender
) -> None:
    body = sender.batch(["301"], items_per_page=5)
    for _ in range(2):
        resp = await client.post("/webhook", data=body.raw, headers=body.headers)
        assert resp.status == 200
    ids = [e.event_id for _, e in read_events(gw_settings)]
    assert len(ids) == 10
    assert len(set(ids)) == 5


async def test_same_message_in_two_differently_batched_bodies(
    client: Client, gw_settings: Settings, sender: WebhookSender
) -> None:
    m1 = sender.message("401", "9", text="first")
    m2 = sender.message("402", "8", text="second")
    m3 = sender.message("401", "9", text="third")
    together = encode(page_body([("401", [m1, m3], []), ("402", [m2], [])], time=1), style="utf8")
    apart = [
        encode(page_body([("402", [m2], []), ("401", [m1], [])], time=2)),
        encode(page_body([("401", [m3], [])], time=3)),
    ]
    for raw in [together, *apart]:
        resp = await client.post("/webhook", data=raw, headers=signed(raw))
        assert resp.status == 200
    ids = [e.event_id for _, e in read_events(gw_settings)]
    assert len(ids) == 6
    assert len(set(ids)) == 3


async def test_escaped_and_raw_unicode_bodies_verify(
    client: Client, gw_settings: Settings, sender: WebhookSender
) -> None:
    item = sender.message("501", "5", text='Здравствуйте 👋🏽 价格 \\ / " ça')
    body = page_body([("501", [item], [])], time=1)
    for style in ("meta", "utf8"):
        raw = encode(body, style=style)  # type: ignore[arg-type]
        resp = await client.post("/webhook", data=raw, headers=signed(raw))
        assert resp.status == 200
    got = read_events(gw_settings)
    assert [e.text for _, e in got] == [item["message"]["text"]] * 2


async def test_empty_entry_list_is_acknowledged(client: Client, gw_settings: Settings) -> None:
    raw = b'{"object":"page","entry":[]}'
    resp = await client.post("/webhook", data=raw, headers=signed(raw))
    assert resp.status == 200
    assert read_events(gw_settings) == []


async def test_feed_changes_are_counted_not_events(client: Client, gw_settings: Settings) -> None:
    body = {
        "object": "page",
        "entry": [{"id": "1", "time": 1, "changes": [{"field": "feed"}], "x-zz": 1}],
    }
    raw = encode(body)
    assert (await client.post("/webhook", data=raw, headers=signed(raw))).status == 200
    text = metrics_text(client)
    assert 'convsync_gateway_ignored_entry_fields_total{field="changes"} 1.0' in text
    assert 'convsync_gateway_ignored_entry_fields_total{field="other"} 1.0' in text
    assert "x-zz" not in text
    assert read_events(gw_settings) == []


# health, readiness, metrics, logs ---------------------------------------------------


async def test_health_ready_and_metrics(client: Client, sender: WebhookSender) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    body = sender.batch(["601"], items_per_page=1, kinds=["read"])
    assert (await client.post("/webhook", data=body.raw, headers=body.headers)).status == 200
    assert (await client.post("/webhook", data=body.raw)).status == 403
    text = metrics_text(client)
    assert 'convsync_gateway_requests_total{route="/webhook",status="200"} 1.0' in text
    assert 'convsync_gateway_requests_total{route="/webhook",status="403"} 1.0' in text
    assert 'convsync_gateway_deliveries_total{platform="messenger"} 1.0' in text
    assert 'convsync_gateway_signature_failures_total{reason="missing"} 1.0' in text
    assert "convsync_gateway_produce_seconds_count 1.0" in text
    assert "convsync_gateway_body_bytes_count 2.0" in text


async def test_webhook_posts_bypass_the_router_and_everything_else_keeps_it(
    client: Client, sender: WebhookSender, gw_settings: Settings
) -> None:
    # The fixture serves the app as `convsync gateway` does, with the fast path installed.
    app_handler = client.server.app._handle  # type: ignore[union-attr]
    runner = client.server.runner
    assert runner is not None and runner.server is not None
    assert runner.server.request_handler != app_handler
    first = sender.batch(["611"], items_per_page=2)
    assert (await client.post("/webhook", data=first.raw, headers=first.headers)).status == 200
    # Expect: 100-continue is the router's to answer (its expect handler), with the same result.
    second = sender.batch(["612"], items_per_page=1)
    resp = await client.post("/webhook", data=second.raw, headers=second.headers, expect100=True)
    assert resp.status == 200
    assert await resp.text() == "EVENT_RECEIVED"
    assert (await client.post("/webhook/", data=first.raw, headers=first.headers)).status == 404
    assert (await client.put("/webhook", data=first.raw, headers=first.headers)).status == 405
    ids = [env.event_id for _, env in read_events(gw_settings)]
    assert sorted(ids) == sorted(expected_ids(first.raw) + expected_ids(second.raw))
    # Each request counted once, whichever path answered it.
    text = metrics_text(client)
    assert 'convsync_gateway_requests_total{route="/webhook",status="200"} 2.0' in text
    assert 'convsync_gateway_requests_total{route="other",status="404"} 1.0' in text
    assert 'convsync_gateway_requests_total{route="/webhook",status="405"} 1.0' in text


async def test_readyz_is_503_when_the_topic_is_missing(
    kafka_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from aiohttp.test_utils import TestServer

    from producers.webhook.app import make_app
    from producers.webhook.settings import GatewaySettings
    from tests.producers.webhook.helpers import with_secrets

    settings = with_secrets(kafka_settings).model_copy(update={"topic_prefix": "no-such-prefix-x"})
    caplog.set_level(logging.INFO, logger="producers.webhook.app")
    async with TestClient(TestServer(make_app(settings, GatewaySettings()))) as c:
        for _ in range(3):
            resp = await c.get("/readyz")
            assert resp.status == 503
            # The public port says no more than that: the reason goes to the log, once.
            assert await resp.json() == {"error": "not ready"}
    reasons = [r.getMessage() for r in caplog.records if r.getMessage().startswith("not ready")]
    assert reasons == ["not ready: topic no-such-prefix-x.deliveries unavailable"]


async def test_concurrent_readiness_checks_share_one_probe(kafka_settings: Settings) -> None:
    # Each probe holds an executor thread for up to probe_timeout while Kafka is down;
    # until 2026-12-02 every /readyz ran its own, so a burst of them took every thread.
    import asyncio

    from producers.webhook.publisher import Publisher

    class Counting:
        def __init__(self, producer: Any) -> None:
            self.producer, self.calls = producer, 0

        def list_topics(self, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return self.producer.list_topics(*args, **kwargs)

    publisher = Publisher(kafka_settings, kafka_settings.topic("events"))
    publisher.start()
    try:
        counting = Counting(publisher._producer)
        publisher._producer = counting  # type: ignore[assignment]
        results = await asyncio.gather(*(publisher.ready() for _ in range(30)))
        assert results == [(True, "ok")] * 30
        assert counting.calls == 1
        assert await publisher.ready() == (True, "ok")  # a later check probes again
        assert counting.calls == 2
        publisher._producer = counting.producer
    finally:
        await publisher.close()


async def test_logs_never_hold_secrets_or_signatures(
    client: Client, sender: WebhookSender, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = sender.batch(["701"], items_per_page=3)
    bad_sig = signature("wrong", body.raw)
    await client.post("/webhook", data=body.raw, headers=body.headers)
    await client.post("/webhook", data=body.raw, headers={"X-Hub-Signature-256": bad_sig})
    await client.get(
        "/webhook",
        params={"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "c"},
    )
    await client.get(
        "/webhook",
        params={"hub.mode": "subscribe", "hub.verify_token": "guess", "hub.challenge": "c"},
    )
    text = caplog.text
    assert "handshake refused" in text and "signature mismatch" in text
    for secret in (SECRET, VERIFY_TOKEN, body.headers["X-Hub-Signature-256"][7:], bad_sig[7:]):
        assert secret not in text
