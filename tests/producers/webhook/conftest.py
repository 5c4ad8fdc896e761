"""Fixtures of the gateway tests: an in-process gateway on fresh topics of the real Kafka."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient

from convsync.settings import Settings
from deploy.simulator.webhooks import WebhookSender
from producers.webhook.app import make_app
from producers.webhook.settings import GatewaySettings
from tests.producers.webhook.helpers import (
    SECRET,
    GatewayProcess,
    start_test_server,
    with_secrets,
)


@pytest.fixture
def gw_settings(kafka_settings: Settings) -> Settings:
    """Fresh topics on the shared Kafka, with the test secrets."""
    return with_secrets(kafka_settings)


@pytest_asyncio.fixture
async def client(gw_settings: Settings) -> AsyncIterator[TestClient[object, object]]:
    """A test client of the gateway app, its producer on ``gw_settings``' topics."""
    server = await start_test_server(make_app(gw_settings, GatewaySettings(produce_timeout=5.0)))
    async with TestClient(server) as c:
        yield c


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Return a factory of ``convsync gateway`` subprocesses, all killed at teardown."""
    made: list[GatewayProcess] = []

    def factory(settings: Settings, **kwargs: Any) -> GatewayProcess:
        gp = GatewayProcess(settings, tmp_path / f"gateway-{len(made)}.log", **kwargs)
        made.append(gp)
        return gp

    yield factory
    for gp in made:
        gp.cleanup()


@pytest.fixture
def sender() -> WebhookSender:
    """Meta's webhook sender, signing with the test secret."""
    return WebhookSender(SECRET, seed=7)
