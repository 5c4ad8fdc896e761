"""Every long-running component serves /metrics and /healthz on the address it is given:
the gateway, the materializer, the streams worker and the archiver run as real processes
against the real stack and are scraped; the alert rules read only metrics that a real
scrape shows (or, for the crawler, that docs/operations.md promises)."""

from __future__ import annotations

import random
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from cli.supervisor import Supervisor
from convsync.db import connect
from convsync.settings import Settings
from deploy.ports import free_ports
from deploy.simulator.webhooks import WebhookSender, encode, page_body, signature
from tests.consumers.helpers import produce, random_events, stored_rows
from tests.consumers.procs import settings_env
from tests.deploy.alerts import crawler_contract, metric_names, rules
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN_TOKEN = "observe-admin-token-" + "x" * 24


def get(url: str) -> tuple[int, str, bytes]:
    """Return the status, content type and body of a GET (errors included)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - our test URL
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def wait_healthy(name: str, url: str, sup: Supervisor, timeout: float = 90.0) -> dict[str, Any]:
    """Wait for ``url`` (a /healthz) to answer 200 with a JSON object; return it."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        dead = [c.name for c in sup.dead()]
        assert not dead, f"{dead} exited; see {sup.log_dir}"
        try:
            status, _, body = get(url)
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        else:
            if status == 200:
                return dict(orjson.loads(body))
            last = f"{status} {body!r}"
        time.sleep(0.5)
    raise AssertionError(f"{name}: {url} not healthy in {timeout:.0f}s ({last})")


def samples(url: str, name: str) -> list[float]:
    """Return the values of the samples called ``name`` on a /metrics page."""
    _, _, body = get(url)
    return [
        s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name == name
    ]


def page_body_json() -> bytes:
    """A page body with one message of a user of page p0."""
    return encode(
        page_body(
            [("p0", [WebhookSender("observe-app-secret", seed=1).item("message", "p0", "u1")], [])],
            time=1,
        )
    )


def scrape(url: str) -> set[str]:
    """Return the family and sample names of a /metrics page (parsed as Prometheus does)."""
    status, ctype, body = get(url)
    assert status == 200, (url, status, body[:200])
    assert ctype.startswith("text/plain"), ctype
    names: set[str] = set()
    for family in text_string_to_metric_families(body.decode()):
        names.add(family.name)
        if family.type == "counter":
            # A labelled counter with no child yet shows only its HELP and TYPE lines;
            # its samples, once counted, are <name>_total.
            names.add(f"{family.name}_total")
        names.update(s.name for s in family.samples)
    return names


@pytest.fixture
def running(
    make_topics: MakeTopics, make_schema: MakeSchema, tmp_path: Path
) -> Iterator[tuple[Settings, Supervisor, dict[str, int]]]:
    settings = make_schema(base=make_topics(partitions=3))
    produce(settings, random_events(random.Random(5), pages=1, users=2, n=20))
    produce(settings, [b"not an envelope"], key=b"p0")  # one dead letter
    ports = {name: free_ports() for name in ("webhook", "gateway", "materializer", "streams")}
    ports["archiver"] = free_ports()
    ports["mapper"] = free_ports()
    ports["relay"] = free_ports()
    ports["old_inbox"] = free_ports()  # nothing listens: the relay keeps retrying
    env = {
        **settings_env(settings),
        "CONVSYNC_PARTITIONS": "3",
        "CONVSYNC_APP_SECRET": "observe-app-secret",
        "CONVSYNC_VERIFY_TOKEN": "observe-verify",
        "CONVSYNC_ADMIN_TOKEN": ADMIN_TOKEN,
        "CONVSYNC_STATE_DIR": str(tmp_path / "state"),
        "CONVSYNC_MEDIA_DIR": str(tmp_path / "media"),
        "CONVSYNC_RELAY_URL": f"http://127.0.0.1:{ports['old_inbox']}/webhook",
    }
    sup = Supervisor(env, tmp_path / "logs")
    addr = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    try:
        sup.start(
            "gateway",
            *("gateway", "--host", "127.0.0.1", "--port", str(ports["webhook"])),
            *("--admin-host", "127.0.0.1", "--admin-port", str(ports["gateway"])),
        )
        sup.start(
            "materializer",
            *("materialize", "--group", f"{settings.topic_prefix}-mat"),
            *("--metrics-addr", addr["materializer"]),
        )
        sup.start(
            "streams",
            *("streams", "--metrics-addr", addr["streams"]),
            *("--data-dir", str(tmp_path / "streams"), "--replication-factor", "1"),
        )
        sup.start(
            "mapper",
            *("mapper", "--metrics-addr", addr["mapper"], "--instance", "observe-mapper"),
        )
        sup.start("relay", *("relay", "--metrics-addr", addr["relay"]))
        sup.start(
            "archiver",
            *("archive", "--metrics-addr", addr["archiver"], "--group", "observe-archiver"),
        )
        yield settings, sup, ports
    finally:
        sup.stop(timeout=20)


def test_each_component_serves_metrics_and_healthz_on_its_address(
    running: tuple[Settings, Supervisor, dict[str, int]],
) -> None:
    _settings, sup, ports = running
    scraped: dict[str, set[str]] = {}
    for name in ("gateway", "materializer", "streams", "archiver", "mapper", "relay"):
        base = f"http://127.0.0.1:{ports[name]}"
        wait_healthy(name, f"{base}/healthz", sup)
        scraped[name] = scrape(f"{base}/metrics")

    # A webhook POST with no signature: refused, and counted by status.
    req = urllib.request.Request(
        f"http://127.0.0.1:{ports['webhook']}/webhook", data=b"{}", method="POST"
    )
    assert get_status(req) == 403
    gateway = scrape(f"http://127.0.0.1:{ports['gateway']}/metrics")
    assert "convsync_gateway_requests_total" in gateway

    # A signed POST: one delivery, which the mapper maps (its lag then reported, 0).
    raw = page_body_json()
    req = urllib.request.Request(
        f"http://127.0.0.1:{ports['webhook']}/webhook",
        data=raw,
        method="POST",
        headers={"X-Hub-Signature-256": signature("observe-app-secret", raw)},
    )
    assert get_status(req) == 200
    mapper = f"http://127.0.0.1:{ports['mapper']}/metrics"
    deadline = time.monotonic() + 60

    def settled() -> bool:
        done = samples(mapper, "convsync_mapper_deliveries_total") == [1.0]
        return done and samples(mapper, "convsync_mapper_lag") == [0.0] * 3

    while not settled() and time.monotonic() < deadline:
        time.sleep(1)
    assert samples(mapper, "convsync_mapper_deliveries_total") == [1.0]
    assert samples(mapper, "convsync_mapper_lag") == [0.0] * 3  # every partition it owns
    # The relay tries the old inbox (nothing listens there) and counts the failures.
    relay = f"http://127.0.0.1:{ports['relay']}/metrics"
    deadline = time.monotonic() + 60
    while not samples(relay, "convsync_relay_attempts_total") and time.monotonic() < deadline:
        time.sleep(1)
    assert samples(relay, "convsync_relay_attempts_total")

    # Each component's own families, on its own address.
    assert "convsync_materializer_events_in_total" in scraped["materializer"]
    assert "convsync_materializer_lag" in scraped["materializer"]
    assert "convsync_streams_events_total" in scraped["streams"]
    assert "convsync_archiver_records_total" in scraped["archiver"]
    assert not any(n.startswith("convsync_materializer") for n in scraped["streams"])

    # The poison record's dead letters, the materializer's and the streams worker's, show
    # in the DLQ's end offsets (what the DLQ alert reads) as the materializer reports them.
    mat = f"http://127.0.0.1:{ports['materializer']}/metrics"
    deadline = time.monotonic() + 60
    while sum(samples(mat, "convsync_dlq_end_offset")) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert sum(samples(mat, "convsync_dlq_end_offset")) == 2
    assert samples(mat, "convsync_materializer_lag")  # the partitions it owns
    # The streams worker read the events (one page: one partition) and caught up.
    streams = f"http://127.0.0.1:{ports['streams']}/metrics"
    deadline = time.monotonic() + 60
    # The mapper's event came in a Kafka transaction: its commit marker takes an offset
    # no consumer reads, so a worker that read everything counts 1 behind the watermark.
    while samples(streams, "convsync_streams_lag") != [1.0] and time.monotonic() < deadline:
        time.sleep(1)
    assert samples(streams, "convsync_streams_lag") == [1.0]

    # The alert rules read nothing that no component (nor the crawler's contract) shows.
    shown = set().union(*scraped.values(), gateway, crawler_contract())
    for rule in rules():
        missing = metric_names(rule["expr"]) - shown
        assert not missing, f"{rule['alert']} reads {missing}, which no component serves"


def get_status(req: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 - our test URL
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def test_the_materializer_healthz_fails_while_its_loop_is_stuck_and_recovers(
    make_topics: MakeTopics, make_schema: MakeSchema, tmp_path: Path
) -> None:
    settings = make_schema(base=make_topics(partitions=3))
    port = free_ports()
    sup = Supervisor({**settings_env(settings), "CONVSYNC_PARTITIONS": "3"}, tmp_path / "logs")
    health = f"http://127.0.0.1:{port}/healthz"
    try:
        sup.start(
            "materializer",
            *("materialize", "--group", f"{settings.topic_prefix}-mat", "--batch-size", "10"),
            *("--metrics-addr", f"127.0.0.1:{port}", "--stale-after", "3"),
        )
        wait_healthy("materializer", health, sup)
        # Postgres blocks every write (no error to retry): the loop waits on its writer.
        with connect(settings, autocommit=False) as lock:
            lock.execute(
                sql.SQL("LOCK TABLE {}.events IN ACCESS EXCLUSIVE MODE").format(
                    sql.Identifier(settings.db_schema)
                )
            )
            events = random_events(random.Random(7), pages=1, users=3, n=60)
            for i in range(0, 60, 10):
                produce(settings, events[i : i + 10])
                time.sleep(0.3)
            deadline = time.monotonic() + 60
            status, _, body = get(health)
            while status == 200 and time.monotonic() < deadline:
                time.sleep(0.5)
                status, _, body = get(health)
            assert status == 503, body
            assert "work loop stuck" in orjson.loads(body)["problem"]
            lock.rollback()
        wait_healthy("materializer", health, sup)
        deadline = time.monotonic() + 60
        while len(stored_rows(settings)) < 60 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(stored_rows(settings)) == 60
    finally:
        sup.stop(timeout=20)
