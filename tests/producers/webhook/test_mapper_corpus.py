"""The webhook corpus through a real gateway and mapper on Kafka, against its golden files.

Every body of ``tests/corpus`` is posted, signed, to the gateway (its producer on fresh
topics); the mapper makes the events of the deliveries; the events topic must then hold,
per page and in posting order, exactly the records ``tests/corpus/golden`` recorded (when
the gateway mapped in place, 57cefc7 onwards), byte for byte, keys included.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import defaultdict

import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from convsync.settings import Settings
from producers.webhook.app import make_app
from producers.webhook.settings import GatewaySettings
from tests.corpus.golden import SECRET, bodies, golden_path
from tests.producers.webhook.helpers import start_test_server
from tests.producers.webhook.mapping_runs import mapper_thread, wait_for_events

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


async def test_the_corpus_through_gateway_and_mapper_gives_the_golden_events(
    kafka_settings: Settings,
) -> None:
    settings = kafka_settings.model_copy(update={"app_secret": SecretStr(SECRET.decode())})
    want: dict[bytes, list[bytes]] = defaultdict(list)
    server = await start_test_server(make_app(settings, GatewaySettings(produce_timeout=10.0)))
    async with TestClient(server) as client:
        for body in bodies():
            raw = body.read_bytes()
            sig = "sha256=" + hmac.new(SECRET, raw, hashlib.sha256).hexdigest()
            resp = await client.post(
                "/webhook",
                data=raw,
                headers={"X-Hub-Signature-256": sig, "Content-Type": "application/json"},
            )
            golden = golden_path(body).read_bytes().splitlines()
            assert resp.status == 200, body.name  # every corpus body is accepted
            for line in golden[1:]:
                key, value = line.split(b"\t", 1)
                want[key].append(value)
    count = sum(map(len, want.values()))
    assert count > 150
    with mapper_thread(settings):
        events = wait_for_events(settings, count)
    got: dict[bytes, list[bytes]] = defaultdict(list)
    for key, value in events:
        got[key].append(value)
    assert dict(got) == dict(want)
