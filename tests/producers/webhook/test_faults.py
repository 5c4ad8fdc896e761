"""Faults for real: Kafka stopped under the gateway, the gateway SIGKILLed under load."""

from __future__ import annotations

import concurrent.futures
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from convsync.kafka import admin_client, ensure_topics, topic_specs
from convsync.settings import Settings
from deploy.kafka_local import KafkaCluster
from deploy.simulator.webhooks import SignedBody, WebhookSender, post
from producers.webhook.app import make_app
from producers.webhook.mapping import map_body
from producers.webhook.payload import parse_body
from producers.webhook.settings import GatewaySettings
from tests.producers.webhook.helpers import (
    SECRET,
    VERIFY_TOKEN,
    GatewayProcess,
    read_events,
    start_test_server,
    with_secrets,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.fault]


def ids_of(signed: SignedBody) -> set[str]:
    return {e.event_id for e in map_body(parse_body(signed.raw))}


@pytest.mark.asyncio
async def test_kafka_stopped_gives_503_then_success_after_restart(
    private_kafka: KafkaCluster,
) -> None:
    settings = with_secrets(Settings(kafka_bootstrap=private_kafka.bootstrap, partitions=3))
    ensure_topics(admin_client(settings), topic_specs(settings))
    sender = WebhookSender(SECRET, seed=21)
    app = make_app(settings, GatewaySettings(produce_timeout=2.0))
    server = await start_test_server(app)
    async with TestClient(server) as client:

        async def post_until_ok(signed: SignedBody) -> None:
            # As Meta does: a 503 (e.g. the producer still acquiring its idempotent
            # producer id on a loaded machine) is retried until acknowledged.
            deadline = time.monotonic() + 90
            while True:
                resp = await client.post("/webhook", data=signed.raw, headers=signed.headers)
                if resp.status == 200:
                    return
                assert resp.status == 503
                assert time.monotonic() < deadline, "no 200 from a healthy broker"

        first = sender.batch(["1", "2"], items_per_page=3)
        await post_until_ok(first)
        assert (await client.get("/readyz")).status == 200

        private_kafka.stop_node(1, kill=True)
        during = sender.batch(["1", "3"], items_per_page=3)
        started = time.monotonic()
        resp = await client.post("/webhook", data=during.raw, headers=during.headers)
        assert resp.status == 503
        assert time.monotonic() - started < 5
        assert (await client.get("/readyz")).status == 503
        assert (await client.get("/healthz")).status == 200

        private_kafka.start_node(1)
        # Meta retries the refused body until it is acknowledged.
        await post_until_ok(during)
        after = sender.batch(["2"], items_per_page=2)
        await post_until_ok(after)
        assert (await client.get("/readyz")).status == 200

    stored = [env.event_id for _, env in read_events(settings, timeout=60)]
    assert set(stored) == ids_of(first) | ids_of(during) | ids_of(after)


def assert_all_in_kafka(settings: Settings, acked: list[SignedBody]) -> None:
    """Every event of every acknowledged body is in ``<prefix>.events``."""
    stored = {env.event_id for _, env in read_events(settings, timeout=60)}
    missing = set().union(*(ids_of(b) for b in acked)) - stored
    assert not missing, f"{len(missing)} events of acknowledged requests are not in Kafka"


class _Load:
    """Eight client threads posting ``bodies`` one connection each until stopped.

    A request that fails at the socket (the gateway is gone or no longer accepts) is
    not acknowledged; every answer's status is counted, and bodies answered 200 are kept.
    """

    def __init__(self, url: str, bodies: list[SignedBody]) -> None:
        self.url = url
        self.acked: list[SignedBody] = []
        self.statuses: dict[int, int] = {}
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._cursor = iter(bodies)
        self._pool = concurrent.futures.ThreadPoolExecutor(8)
        self._futures = [self._pool.submit(self._post_until_stopped) for _ in range(8)]

    def _post_until_stopped(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                body = next(self._cursor, None)
            if body is None:
                return
            try:
                status = post(self.url + "/webhook", body, timeout=10)
            except OSError:
                continue
            with self._lock:
                self.sent += 1
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status == 200:
                    self.acked.append(body)

    def wait_acked(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        for f in self._futures:
            f.result()
        self._pool.shutdown()


def test_sigkill_under_load_loses_no_acknowledged_request(
    kafka_settings: Settings, gateway_process: Callable[..., GatewayProcess]
) -> None:
    gw = gateway_process(kafka_settings)
    gw.start()
    sender = WebhookSender(SECRET, seed=33)
    load = _Load(gw.url, [sender.batch([str(100 + i % 7)], items_per_page=2) for i in range(3000)])
    load.wait_acked(150)
    gw.kill()
    time.sleep(0.5)
    load.stop()
    acked = load.acked
    assert len(acked) >= 150, f"only {len(acked)} acknowledged of {load.sent} sent before the kill"
    assert_all_in_kafka(kafka_settings, acked)
    log = gw.log_file.read_text()
    for secret in (SECRET, VERIFY_TOKEN, acked[0].headers["X-Hub-Signature-256"][7:]):
        assert secret not in log


def test_sigterm_under_load_finishes_requests_in_flight_and_flushes(
    kafka_settings: Settings, gateway_process: Callable[..., GatewayProcess]
) -> None:
    # `convsync gateway` runs its own aiohttp runner (for the webhook fast path), so its
    # shutdown is ours: stop accepting, let requests in flight finish, then flush.
    gw = gateway_process(kafka_settings)
    gw.start()
    sender = WebhookSender(SECRET, seed=35)
    load = _Load(gw.url, [sender.batch([str(200 + i % 5)], items_per_page=2) for i in range(3000)])
    load.wait_acked(150)
    code = gw.stop()  # SIGTERM while the eight clients keep posting
    load.stop()
    assert code == 0
    assert len(load.acked) >= 150
    # No request that reached a handler was cut off or refused with a 503.
    assert set(load.statuses) == {200}, load.statuses
    [stopped] = _log_lines(gw.log_file, "stopped: ")
    posts = int(stopped.split("stopped: ")[1].split()[0])
    assert posts >= len(load.acked) and stopped.endswith(" 0 records unconfirmed"), stopped
    assert _log_lines(gw.log_file, "signal received, shutting down")
    assert_all_in_kafka(kafka_settings, load.acked)


def _log_lines(path: Path, marker: str) -> list[str]:
    return [line for line in path.read_text().splitlines() if marker in line]


def test_workers_share_the_port_and_stop_on_sigterm(
    kafka_settings: Settings, gateway_process: Callable[..., GatewayProcess]
) -> None:
    gw = gateway_process(kafka_settings, workers=2)
    log_file = gw.log_file
    gw.start(timeout=60)
    try:
        deadline = time.monotonic() + 60
        # Each worker logs this after its start-up, just before it binds: its start-up
        # objects are frozen for the collector (convsync.gctune.freeze_startup).
        while len(frozen := _log_lines(log_file, "start-up objects frozen")) < 2:
            assert time.monotonic() < deadline, log_file.read_text()[-2000:]
            time.sleep(0.2)
        pids = {line.split("gateway pid ")[1].split(":")[0] for line in frozen}
        assert len(pids) == 2, frozen
        assert all(int(line.split(": ")[-1].split()[0]) > 10_000 for line in frozen), frozen
        time.sleep(1.0)  # the second worker binds right after that line
        sender = WebhookSender(SECRET, seed=44)
        bodies = [sender.batch(["9"], items_per_page=1) for _ in range(40)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda b: post(gw.url + "/webhook", b), bodies))
        assert statuses == [200] * 40
        # Any worker's /metrics (on the private listener, which every worker serves too)
        # sums every worker's counts, each at most a second old (every worker writes its
        # counts to the shared directory every second).
        line = 'convsync_gateway_requests_total{route="/webhook",status="200"} 40.0'
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(gw.admin_url + "/metrics", timeout=5) as r:  # noqa: S310
                metrics: Any = r.read().decode()
            if line in metrics or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        assert line in metrics, metrics
    finally:
        code = gw.stop()
    assert code == 0
    # The workers' shared metric files go with them.
    [announced] = _log_lines(log_file, "their metrics in ")
    metrics_dir = Path(announced.split("their metrics in ")[1].strip())
    assert metrics_dir.name.startswith("convsync-gateway-metrics-")
    assert not metrics_dir.exists()
    # Each new connection is hashed to a worker: both served some of the 40.
    served = [int(line.split(": ")[-1].split()[0]) for line in _log_lines(log_file, "stopped: ")]
    assert len(served) == 2 and sum(served) == 40 and min(served) > 0, served
    assert len({e.event_id for _, e in read_events(kafka_settings)}) == 40
