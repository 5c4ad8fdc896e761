"""The mapper on the real Kafka: deliveries -> events, exactly once, in page order.

The gateway (the test client, its producer on fresh topics) publishes deliveries; the
mapper (in a thread, or `convsync mapper` killed and restarted) makes their events. The
expected events are the mapping of every delivery by the same function
(``helpers.read_events``); the mapper must write each of them once, per page in the
order the gateway took them, with the ids unchanged.
"""

from __future__ import annotations

import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from confluent_kafka import Producer

from convsync.settings import Settings
from deploy.simulator.webhooks import WebhookSender
from producers.webhook.admit import Accepted, admit
from producers.webhook.deliveries import map_delivery
from producers.webhook.rewind import rewind
from producers.webhook.signature import HEADER
from schemas.envelope import Envelope
from schemas.records import DeadLetter
from tests.fixtures.ends import unanswered_probe
from tests.producers.webhook.helpers import SECRET, read_events, read_records
from tests.producers.webhook.mapping_runs import (
    mapper_process,
    mapper_thread,
    wait_for_events,
    wait_totals,
)

pytestmark = pytest.mark.asyncio
Client = TestClient[Any, Any]
PAGES = [str(100 + p) for p in range(8)]


def by_page(records: list[tuple[bytes, bytes]]) -> dict[bytes, list[bytes]]:
    """Event values per page (the key), in the order read (one partition per page)."""
    out: dict[bytes, list[bytes]] = defaultdict(list)
    for key, value in records:
        out[key].append(value)
    return dict(out)


def expected(settings: Settings) -> dict[bytes, list[bytes]]:
    """The events the deliveries on ``settings``' topic must become, per page."""
    return by_page([(key, env.to_bytes()) for key, env in read_events(settings)])


async def post_bodies(client: Client, sender: WebhookSender, n: int) -> None:
    for i in range(n):
        pages = [PAGES[i % len(PAGES)], PAGES[(i * 3 + 1) % len(PAGES)]]
        body = sender.batch(pages, items_per_page=1 + i % 3)
        resp = await client.post("/webhook", data=body.raw, headers=body.headers)
        assert resp.status == 200


async def test_the_mapper_writes_every_event_once_in_page_order(
    client: Client, gw_settings: Settings, sender: WebhookSender
) -> None:
    await post_bodies(client, sender, 40)
    want = expected(gw_settings)
    count = sum(map(len, want.values()))
    with mapper_thread(gw_settings, max_records=7) as mapper:
        totals = wait_totals(mapper, 80)
        events = wait_for_events(gw_settings, count)
    assert by_page(events) == want
    # Ids unchanged and unique: each event once.
    ids = [Envelope.from_bytes(v).event_id for _k, v in events]
    assert len(set(ids)) == len(ids) == count
    assert totals.deliveries == 80
    assert totals.events == count
    assert totals.dead_letters == 0
    assert totals.transactions >= 80 // 7


async def test_a_lag_probe_the_broker_never_answers_holds_up_no_transaction(
    client: Client, gw_settings: Settings, sender: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The end-offset queries hang until the end of the test (the mapper once asked them
    # in its own loop, up to a second each): every delivery is mapped meanwhile.
    probe = unanswered_probe(monkeypatch)
    await post_bodies(client, sender, 12)
    want = expected(gw_settings)
    try:
        with mapper_thread(gw_settings, max_records=5, lag_every=0.01) as mapper:
            totals = wait_totals(mapper, 24)
            events = wait_for_events(gw_settings, sum(map(len, want.values())))
            assert probe.asked.is_set() and not probe.answer.is_set()
            probe.answer.set()  # (so that the probe's thread ends at once with the mapper)
    finally:
        probe.answer.set()
    assert by_page(events) == want
    assert totals.deliveries == 24


async def test_a_record_that_is_no_delivery_is_dead_lettered_and_the_next_mapped(
    gw_settings: Settings, sender: WebhookSender
) -> None:
    body = sender.batch(["7"], items_per_page=2)
    decision = admit(SECRET.encode(), body.raw, body.headers[HEADER], max_record_bytes=10**7)
    assert isinstance(decision, Accepted)
    producer = Producer(gw_settings.kafka_config())
    producer.produce(gw_settings.topic("deliveries"), key=b"7", value=b"not a delivery")
    for key, value in decision.records:
        producer.produce(gw_settings.topic("deliveries"), key=key, value=value)
    assert producer.flush(10) == 0
    with mapper_thread(gw_settings) as mapper:
        totals = wait_totals(mapper, 2)
        events = wait_for_events(gw_settings, 2)
    assert totals.dead_letters == 1
    want = [v for _k, d in decision.records for _k2, v in map_delivery(d).records]
    assert by_page(events)[b"7"] == want
    [(key, letter)] = read_records(gw_settings, "dlq")
    dead = DeadLetter.model_validate_json(letter)
    assert key == b"7"
    assert dead.component == "mapper"
    assert dead.topic == gw_settings.topic("deliveries")
    assert dead.reason.startswith("not a delivery")
    assert dead.value_b64 is not None


async def test_a_killed_mapper_leaves_every_event_exactly_once(
    client: Client, gw_settings: Settings, sender: WebhookSender, tmp_path: Path
) -> None:
    await post_bodies(client, sender, 150)
    want = expected(gw_settings)
    count = sum(map(len, want.values()))
    events = kill_midway_and_restart(gw_settings, tmp_path / "mapper.log", count)
    assert by_page(events) == want, (tmp_path / "mapper.log").read_text()[-3000:]


def kill_midway_and_restart(settings: Settings, log: Path, count: int) -> list[tuple[bytes, bytes]]:
    """Run `convsync mapper`, SIGKILL it once some events are committed, start the same
    instance again; return the events once ``count`` are there (and 2 s more)."""
    proc = mapper_process(settings, log, "kill-test", batch_size=2)
    try:
        # SIGKILL once some transactions committed, with others still to come.
        deadline = time.monotonic() + 60
        while not read_records(settings, "events") and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        partial = len(read_records(settings, "events"))
        assert 0 < partial < count, (partial, count)
        # The same instance again: it fences the dead one and aborts what it left open.
        proc = mapper_process(settings, log, "kill-test")
        # The dead member holds its partitions until its 45 s session expires.
        wait_for_events(settings, count, timeout=120)
        time.sleep(2)  # anything more would be a copy
        return read_records(settings, "events")
    finally:
        proc.terminate()
        proc.wait(30)


async def test_a_rewind_replays_the_deliveries_with_the_same_ids(
    client: Client, gw_settings: Settings, sender: WebhookSender
) -> None:
    await post_bodies(client, sender, 12)
    want = expected(gw_settings)
    count = sum(map(len, want.values()))
    with mapper_thread(gw_settings) as mapper:
        wait_totals(mapper, 24)
        wait_for_events(gw_settings, count)
    # A time after every delivery: the group stays at the end, nothing is mapped again.
    later = int(time.time() * 1000) + 3_600_000
    kafka = gw_settings.kafka_config()
    topic = gw_settings.topic("deliveries")
    ends = rewind(kafka, topic, "convsync-mapper", to_time_ms=later)
    assert sum(ends.values()) == 24
    moved = rewind(kafka, topic, "convsync-mapper", to_offset=0)
    assert set(moved.values()) == {0}
    with mapper_thread(gw_settings) as mapper:
        assert wait_totals(mapper, 24).deliveries == 24
        events = wait_for_events(gw_settings, 2 * count)
    assert by_page(events) == {page: values + values for page, values in want.items()}
    ids = [orjson.loads(v)["event_id"] for _k, v in events]
    assert len(set(ids)) == count  # the replay's copies carry the same ids
