"""The gateway's endpoints, against fresh topics on the real local Kafka: the handshake,
accepted POSTs and what they publish, health, readiness, metrics and logs.

The POSTs it refuses and its size and depth limits are in test_app_limits.py.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from convsync.settings import Settings
from deploy.simulator.webhooks import KINDS, WebhookSender, encode, page_body, signature
from producers.webhook.app import GATEWAY
from producers.webhook.mapping import map_body
from producers.webhook.payload import parse_body
from tests.producers.webhook.helpers import (
    SECRET,
    VERIFY_TOKEN,
    read_events,
    signed,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

Client = TestClient[Any, Any]


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
