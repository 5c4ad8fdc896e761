"""`convsync relay` on the real Kafka against a local fake of the old inbox's endpoint.

The gateway (its producer on fresh topics, ``CONVSYNC_RELAY_URL`` set) keeps every
verified body on ``<prefix>.relay``; the relay forwards each, after Meta's 200, to the
fake endpoint, which fails a number of times first. The body and its signature header
must reach it byte for byte; a body the endpoint never takes goes, whole, to
``<prefix>.relay-dead`` after the attempts, and nothing is lost or forwarded twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from pydantic import SecretStr

from convsync.ends import EndsProbe
from convsync.settings import Settings
from deploy.simulator.webhooks import WebhookSender
from producers.webhook.app import make_app
from producers.webhook.relay import LAG, Relay, RelayConfig, Totals
from producers.webhook.settings import GatewaySettings
from producers.webhook.signature import HEADER
from tests.fixtures.ends import unanswered_probe
from tests.producers.webhook.helpers import read_records, start_test_server, with_secrets

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


@dataclass
class OldInbox:
    """The old endpoint: answers ``failures`` 500s first, then 200 (or 503 for ever)."""

    failures: int
    forever: bool = False
    calls: int = 0
    taken: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        body = await request.read()
        if self.forever:
            return web.Response(status=503)
        if self.failures > 0:
            self.failures -= 1
            return web.Response(status=500)
        self.taken.append((body, dict(request.headers)))
        return web.Response(text="EVENT_RECEIVED")


@contextlib.asynccontextmanager
async def old_inbox(inbox: OldInbox) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/hook", inbox.handle)
    server = TestServer(app)
    await server.start_server()
    try:
        yield str(server.make_url("/hook"))
    finally:
        await server.close()


async def post(settings: Settings, bodies: list[Any]) -> None:
    server = await start_test_server(make_app(settings, GatewaySettings(produce_timeout=10.0)))
    async with TestClient(server) as client:
        for body in bodies:
            resp = await client.post("/webhook", data=body.raw, headers=body.headers)
            assert resp.status == 200


async def relay_until(config: RelayConfig, done: Any, seconds: float = 60.0) -> Totals:
    """Run a relay until ``done()`` (checked every 0.1 s, for ``seconds`` at most)."""
    relay = Relay(config)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    for _ in range(int(seconds * 10)):
        if done() or task.done():
            break
        await asyncio.sleep(0.1)
    stop.set()
    return await asyncio.wait_for(task, 30)


def config_of(settings: Settings, **kw: Any) -> RelayConfig:
    base = RelayConfig.from_settings(settings, max_attempts=kw.pop("max_attempts", 8))
    return RelayConfig(**{**{f: getattr(base, f) for f in base.__slots__}, **kw})


async def test_every_body_reaches_the_old_inbox_byte_for_byte_after_failures(
    kafka_settings: Settings, sender: WebhookSender
) -> None:
    inbox = OldInbox(failures=3)
    bodies = [sender.batch(["5", "6"], items_per_page=2) for _ in range(4)]
    async with old_inbox(inbox) as url:
        settings = with_secrets(kafka_settings).model_copy(update={"relay_url": SecretStr(url)})
        await post(settings, bodies)
        config = config_of(settings, backoff_initial=0.01, backoff_max=0.05)
        totals = await relay_until(config, lambda: len(inbox.taken) == 4)
        # Once forwarded, a new relay of the group forwards nothing again.
        again = await relay_until(config_of(settings), lambda: False, seconds=5)
    assert [body for body, _ in inbox.taken] == [b.raw for b in bodies]
    for (_, headers), body in zip(inbox.taken, bodies, strict=True):
        assert headers["X-Hub-Signature-256"] == body.headers[HEADER]
    assert (totals.forwarded, totals.retries, totals.dead) == (4, 3, 0)
    assert inbox.calls == 7
    assert again.forwarded == 0
    assert len(read_records(settings, "relay")) == 4  # kept, as Kafka's retention says


async def test_a_body_the_old_inbox_never_takes_is_kept_whole_on_the_dead_topic(
    kafka_settings: Settings, sender: WebhookSender
) -> None:
    inbox = OldInbox(failures=0, forever=True)
    body = sender.batch(["9"], items_per_page=1)
    async with old_inbox(inbox) as url:
        settings = with_secrets(kafka_settings).model_copy(update={"relay_url": SecretStr(url)})
        await post(settings, [body])
        config = config_of(settings, max_attempts=3, backoff_initial=0.01, backoff_max=0.02)
        relay_totals = await relay_until(config, lambda: inbox.calls >= 3)
        # Let it finish burying the record (the loop stops at the next round).
        if relay_totals.dead == 0:
            relay_totals = await relay_until(config, lambda: False, seconds=5)
    assert relay_totals.dead == 1
    assert inbox.calls == 3
    [(key, value)] = read_records(settings, "relay-dead")
    assert value == body.raw and key == b"9"


async def test_without_a_relay_url_the_gateway_keeps_no_copy(
    kafka_settings: Settings, sender: WebhookSender
) -> None:
    await post(with_secrets(kafka_settings), [sender.batch(["3"], items_per_page=1)])
    assert read_records(kafka_settings, "relay") == []
    assert len(read_records(kafka_settings, "deliveries")) == 1


def lag_gauges(group: str) -> dict[int, float]:
    """The relay lag gauges of ``group`` that are set, by partition."""
    out: dict[int, float] = {}
    for metric in REGISTRY.collect():
        if metric.name != "convsync_relay_lag":
            continue
        for sample in metric.samples:
            if sample.labels["group"] == group:
                out[int(sample.labels["partition"])] = sample.value
    return out


async def test_the_lag_gauges_count_from_the_ends_the_probe_learned(
    kafka_settings: Settings, sender: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every partition's end is said to be 100: each gauge is 100 minus the relay's own
    # position there, so over the partitions the relay read, the gauges fall short of
    # 100 by exactly the bodies it forwarded.
    monkeypatch.setattr(EndsProbe, "_ask", lambda _probe, _topic, _partition: (0, 100))
    inbox = OldInbox(failures=0)
    bodies = [sender.batch([str(page)], items_per_page=1) for page in range(6)]
    group = f"relay-{uuid.uuid4().hex[:8]}"
    async with old_inbox(inbox) as url:
        settings = with_secrets(kafka_settings).model_copy(update={"relay_url": SecretStr(url)})
        await post(settings, bodies)

        def counted() -> bool:
            gauges = lag_gauges(group)
            return len(inbox.taken) == 6 and sum(100 - v for v in gauges.values()) == 6

        totals = await relay_until(config_of(settings, group=group), counted, seconds=30)
    assert totals.forwarded == 6
    gauges = lag_gauges(group)
    assert gauges and all(v <= 100 for v in gauges.values())
    assert sum(100 - v for v in gauges.values()) == 6
    for partition in gauges:
        LAG.remove(group, str(partition))


async def test_a_probe_the_broker_never_answers_holds_up_no_body(
    kafka_settings: Settings, sender: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The end-offset queries hang until the end of the test: the relay forwards every
    # body meanwhile (its loop reads what the probe learned, it never waits for it).
    probe = unanswered_probe(monkeypatch)
    inbox = OldInbox(failures=0)
    bodies = [sender.batch([str(page)], items_per_page=1) for page in range(6)]
    group = f"relay-{uuid.uuid4().hex[:8]}"
    held: list[bool] = []

    def forwarded() -> bool:
        if len(inbox.taken) < 6:
            return False
        # All forwarded while the probe still waits.
        held.append(probe.asked.is_set() and not probe.answer.is_set())
        probe.answer.set()
        return True

    try:
        async with old_inbox(inbox) as url:
            settings = with_secrets(kafka_settings).model_copy(update={"relay_url": SecretStr(url)})
            await post(settings, bodies)
            totals = await relay_until(config_of(settings, group=group), forwarded, seconds=30)
    finally:
        probe.answer.set()
    assert held == [True]
    assert totals.forwarded == 6
    # (Pages on several partitions: forwarded in order within each, not across them.)
    assert sorted(body for body, _ in inbox.taken) == sorted(b.raw for b in bodies)
    assert lag_gauges(group) == {}  # no end learned, no gauge
