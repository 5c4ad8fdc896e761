"""Fixtures of the admin tests: the gateway's private listener (admin API, dashboard,
metrics) served from a thread, a real materializer on the same topics and schema, and
event helpers."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from aiohttp import web
from confluent_kafka import TopicPartition
from pydantic import SecretStr

from admin import AdminSettings
from cli.listeners import private_app
from consumers.materializer import BatchConfig, Materializer
from convsync.http import Deadlines, listen, make_runner
from convsync.kafka import make_consumer, read_watermarks
from convsync.settings import Settings
from deploy.ports import free_ports
from producers.webhook.metrics import Metrics
from schemas.envelope import Envelope
from tests.consumers.helpers import produce, wait_for
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema
from tests.producers.webhook.helpers import with_secrets

TOKEN = secrets.token_urlsafe(32)
FAST = BatchConfig(max_records=500, max_wait=0.05, idle_poll=0.2)


class ServerThread:
    """The gateway's private listener served on 127.0.0.1 from a loop in its own thread,
    as ``convsync gateway`` composes and serves it (``cli/listeners.py``)."""

    def __init__(
        self,
        settings: Settings,
        admin: AdminSettings | None = None,
        deadlines: Deadlines | None = None,
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner: web.AppRunner | None = None
        self.listener: asyncio.Server | None = None
        self.url = self._call(self._start(settings, admin or AdminSettings(), deadlines))

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    async def _start(
        self, settings: Settings, admin: AdminSettings, deadlines: Deadlines | None
    ) -> str:
        deadlines = deadlines or Deadlines()
        app = private_app(settings, admin, deadlines, Metrics())
        self.runner = make_runner(app, deadlines)
        await self.runner.setup()
        self.listener = await listen(self.runner, "127.0.0.1", 0, deadlines)
        port = self.listener.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _stop(self) -> None:
        if self.listener is not None:
            self.listener.close()
        if self.runner is not None:
            await self.runner.cleanup()

    def stop(self) -> None:
        self._call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@dataclass
class AdminEnv:
    """A running gateway + admin app and materializer on fresh topics and a fresh schema."""

    settings: Settings
    server: ServerThread
    materializer: Materializer
    thread: threading.Thread
    errors: list[BaseException] = field(default_factory=list)

    @property
    def base(self) -> str:
        return self.server.url + "/admin"

    def get(self, path: str, token: str | None = TOKEN, **kwargs: Any) -> requests.Response:
        return requests.get(self.base + path, headers=auth(token, kwargs), timeout=30, **kwargs)

    def post(self, path: str, token: str | None = TOKEN, **kwargs: Any) -> requests.Response:
        return requests.post(self.base + path, headers=auth(token, kwargs), timeout=60, **kwargs)

    def patch(self, path: str, token: str | None = TOKEN, **kwargs: Any) -> requests.Response:
        return requests.patch(self.base + path, headers=auth(token, kwargs), timeout=30, **kwargs)

    def put(self, path: str, token: str | None = TOKEN, **kwargs: Any) -> requests.Response:
        return requests.put(self.base + path, headers=auth(token, kwargs), timeout=30, **kwargs)

    def produce(self, events: list[Envelope]) -> None:
        produce(self.settings, events)

    def wait_rows(self, check: Callable[[], bool], what: str) -> None:
        wait_for(check, timeout=60, what=what)

    def crawl_records(self) -> int:
        """Return the number of records on the crawl topic."""
        consumer = make_consumer(self.settings, f"read-{uuid.uuid4().hex[:8]}")
        try:
            topic = self.settings.topic("crawl")
            total = 0
            for p in range(self.settings.partitions):
                lo, hi = read_watermarks(consumer, TopicPartition(topic, p), timeout=10)
                total += hi - lo
            return total
        finally:
            consumer.close()


def auth(token: str | None, kwargs: dict[str, Any]) -> dict[str, str]:
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def message(
    page: str, psid: str, mid: str, at_ms: int, *, direction: str = "inbound", text: str = "hi"
) -> Envelope:
    """Return a message event as the webhook would map it."""
    return Envelope.build(
        kind="message",
        page_id=page,
        psid=psid,
        mid=mid,
        occurred_at=at_ms,
        source="webhook",
        direction=direction,  # type: ignore[arg-type]
        text=text,
        raw={"mid": mid},
    )


@pytest.fixture
def admin_env(make_topics: MakeTopics, make_schema: MakeSchema) -> Iterator[AdminEnv]:
    """The gateway with the admin app, and a materializer, on their own topics and schema."""
    base = with_secrets(make_topics()).model_copy(update={"admin_token": SecretStr(TOKEN)})
    settings = make_schema(base=base)
    mat = Materializer.from_settings(settings, group=f"admin-{settings.db_schema}", batch=FAST)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            mat.run()
        except BaseException as e:
            errors.append(e)
            raise

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    server = ServerThread(settings)
    env = AdminEnv(settings, server, mat, thread, errors)
    try:
        yield env
    finally:
        server.stop()
        mat.stop()
        thread.join(60)
    assert not thread.is_alive()
    assert not errors, errors


def now_ms() -> int:
    return int(time.time() * 1000)


def kafka_unreachable(settings: Settings) -> Settings:
    """Return ``settings`` with Kafka at a port nothing listens on; a record is given up
    after 3 s (so the request is answered 503 well before the admin's 30 s flush)."""
    port = free_ports()
    return settings.model_copy(
        update={
            "kafka_bootstrap": f"127.0.0.1:{port}",
            "kafka_extra": {**settings.kafka_extra, "message.timeout.ms": "3000"},
        }
    )
