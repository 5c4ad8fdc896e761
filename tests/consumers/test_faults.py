"""Fault tests: kill -9 mid-stream, rebalances, Postgres restart, Kafka outage."""

from __future__ import annotations

import logging
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
from psycopg import sql
from pydantic import SecretStr

from consumers.materializer import BatchConfig, Materializer
from convsync.db import connect
from convsync.errors import ConsumerFatalError
from convsync.kafka import admin_client, ensure_topics, make_consumer, topic_specs
from convsync.settings import Settings
from deploy.kafka_local import KafkaCluster
from deploy.postgres_local import LocalPostgres
from schemas.envelope import Envelope
from schemas.migrate import apply_migrations
from tests.consumers.helpers import (
    conversations,
    expected,
    produce,
    random_events,
    scalar,
    wait_for,
    with_duplicates,
)
from tests.consumers.procs import MaterializerProcess, Trickle
from tests.consumers.test_materializer import running, stored_end
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.fault]


def on_private_postgres(settings: Settings, postgres: LocalPostgres) -> Settings:
    """``settings`` pointed at a migrated ``convsync`` schema of a private Postgres."""
    moved = settings.model_copy(
        update={"database_url": SecretStr(postgres.url), "db_schema": "convsync"}
    )
    with connect(moved) as conn:
        apply_migrations(conn, schema="convsync")
    return moved


def new_group() -> str:
    """A consumer group of the test's own: members of other tests never join it."""
    return f"g-{uuid.uuid4().hex[:12]}"


Spawn = Callable[..., MaterializerProcess]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Return a factory of materializer processes; any still running are killed after."""
    started: list[MaterializerProcess] = []

    def factory(settings: Settings, log: Path, *args: str) -> MaterializerProcess:
        proc = MaterializerProcess(settings, log, *args)
        started.append(proc)
        return proc

    yield factory
    for proc in started:
        if proc.proc.poll() is None:
            proc.kill()


def assert_exact(settings: Settings, events: list[Envelope], delivered: list[Envelope]) -> None:
    """The tables hold every event once and the reference fold of them; versions are sane."""
    assert conversations(settings) == expected(events)
    assert scalar(settings, "SELECT count(*) FROM {s}.events") == len({e.event_id for e in events})
    per_conv = Counter((e.page_id, e.psid) for e in delivered)
    with connect(settings) as conn:
        rows = conn.execute(
            sql.SQL("SELECT page_id, psid, version FROM {}.conversations").format(
                sql.Identifier(settings.db_schema)
            )
        ).fetchall()
    for page, psid, version in rows:
        assert 1 <= int(version) <= per_conv[(str(page), str(psid))]  # type: ignore[call-overload]


def test_sigkill_mid_stream_ten_times(
    make_topics: MakeTopics, make_schema: MakeSchema, spawn: Spawn, tmp_path: Path
) -> None:
    rng = random.Random(11)
    settings = make_schema(base=make_topics(partitions=6))
    events = random_events(rng, pages=40, users=500, n=100_000)
    delivered = with_duplicates(rng, events, 0.05)
    trickle = Trickle(settings, delivered, chunks=20, seconds=20)
    trickle.start()
    group = new_group()
    # Static membership: a restarted member gets its partitions back without waiting
    # for the killed one's session to expire.
    args = ("--group", group, "--instance-id", "crash-test", "--batch-size", "2000")
    log = tmp_path / "m.log"
    kills = 0
    while kills < 10:
        proc = spawn(settings, log, *args)
        # Kill at a random moment after the new life started consuming.
        wait_for(partial(owns_partitions, proc, kills + 1), timeout=60, what="assignment")
        if kills == 0:
            # The first life must commit once, or the next has nothing to resume from
            # (on a loaded machine its first batch can take longer than the kill delay).
            wait_for(lambda: stored_end(settings, group) > 0, timeout=60, what="first commit")
        time.sleep(rng.uniform(0.1, 1.5))
        assert proc.proc.poll() is None, proc.text()[-3000:]
        proc.kill()
        kills += 1
    proc = spawn(settings, log, *args)
    trickle.join(120)
    assert trickle.error is None and not trickle.is_alive()
    wait_for(lambda: stored_end(settings, group) == len(delivered), timeout=120, what="all offsets")
    assert proc.terminate() == 0, proc.text()[-3000:]
    # Every life after the first resumed from offsets stored in Postgres.
    resumed = re.findall(r"assigned 6 partitions of \S+: \{(.*)\}", proc.text())
    assert len(resumed) == 11
    assert all(re.search(r": \d+", line) for line in resumed[1:])
    assert_exact(settings, events, delivered)


def owns_partitions(proc: MaterializerProcess, times: int = 1) -> bool:
    """True once ``proc`` logged ``times`` non-empty assignments."""
    return len(re.findall(r"assigned [1-9]\d* partitions", proc.text())) >= times


def test_two_members_partitions_move(
    make_topics: MakeTopics, make_schema: MakeSchema, spawn: Spawn, tmp_path: Path
) -> None:
    rng = random.Random(12)
    settings = make_schema(base=make_topics(partitions=6))
    group = new_group()
    args = ("--group", group, "--batch-size", "500")
    events = random_events(rng, pages=30, users=200, n=20_000)
    delivered = with_duplicates(rng, events, 0.1)
    cut = len(delivered) * 2 // 3
    trickle = Trickle(settings, delivered[:cut], chunks=20, seconds=10)
    trickle.start()
    a = spawn(settings, tmp_path / "a.log", *args)
    wait_for(lambda: owns_partitions(a), timeout=60, what="a to get partitions")
    # b joins: some of a's partitions move to b.
    b = spawn(settings, tmp_path / "b.log", *args)
    wait_for(lambda: owns_partitions(b), timeout=60, what="b to get partitions")
    assert "revoked" in a.text()
    # a leaves: its partitions move to b; a2 joins: some move back.
    assert a.terminate() == 0, a.text()[-3000:]
    wait_for(lambda: owns_partitions(b, 2), timeout=60, what="b to take a's partitions")
    a2 = spawn(settings, tmp_path / "a2.log", *args)
    wait_for(lambda: owns_partitions(a2), timeout=60, what="a2 to get partitions")
    trickle.join(120)
    assert trickle.error is None
    produce(settings, delivered[cut:])
    wait_for(lambda: stored_end(settings, group) == len(delivered), timeout=120, what="all offsets")
    assert a2.terminate() == 0, a2.text()[-3000:]
    assert b.terminate() == 0, b.text()[-3000:]
    assert_exact(settings, events, delivered)
    for proc in (a, b, a2):
        found = re.search(r"materializer stopped: (\d+) records", proc.text())
        assert found is not None and int(found.group(1)) > 0, proc.text()[-2000:]


def test_fenced_static_member_rejoins(
    make_topics: MakeTopics, make_schema: MakeSchema, spawn: Spawn, tmp_path: Path
) -> None:
    """A static member fenced by another with its instance id (where a session timeout on
    a starved machine also leads) gets a fatal consumer error: it rejoins with a new
    consumer instead of exiting or sitting on the dead one, and the result is exact."""
    rng = random.Random(13)
    settings = make_schema(base=make_topics(partitions=6))
    group = new_group()
    args = ("--group", group, "--instance-id", "same-id", "--batch-size", "500")
    events = random_events(rng, pages=30, users=200, n=20_000)
    delivered = with_duplicates(rng, events, 0.1)
    trickle = Trickle(settings, delivered, chunks=20, seconds=15)
    trickle.start()
    a = spawn(settings, tmp_path / "a.log", *args)
    wait_for(lambda: owns_partitions(a), timeout=60, what="a to get partitions")
    wait_for(lambda: stored_end(settings, group) > 0, timeout=60, what="a's first commit")
    # b joins with a's instance id: the coordinator fences a.
    b = spawn(settings, tmp_path / "b.log", *args)
    wait_for(lambda: "rejoining the group" in a.text(), timeout=90, what="a to rejoin")
    b.kill()
    trickle.join(120)
    assert trickle.error is None and not trickle.is_alive()
    wait_for(lambda: stored_end(settings, group) == len(delivered), timeout=120, what="all offsets")
    assert a.proc.poll() is None, a.text()[-3000:]
    assert a.terminate() == 0, a.text()[-3000:]
    assert "consumer failed fatally" in a.text()
    assert_exact(settings, events, delivered)


def test_postgres_restart_mid_run(make_topics: MakeTopics, private_postgres: LocalPostgres) -> None:
    rng = random.Random(13)
    settings = on_private_postgres(make_topics(partitions=4), private_postgres)
    events = random_events(rng, pages=10, users=100, n=6_000)
    delivered = with_duplicates(rng, events, 0.1)
    half = len(delivered) // 2
    produce(settings, delivered[:half])
    config = BatchConfig(max_records=300, max_wait=0.05, backoff_initial=0.1, backoff_max=1)
    group = new_group()
    mat = Materializer.from_settings(settings, group=group, batch=config)
    with running(mat):
        wait_for(lambda: mat.totals.records > 0, timeout=60, what="first batch")
        private_postgres.stop(mode="immediate")
        produce(settings, delivered[half:])
        time.sleep(2)
        private_postgres.start()
        wait_for(lambda: stored_end(settings, group) == len(delivered), timeout=90, what="offsets")
    assert mat.totals.retries > 0
    assert_exact(settings, events, delivered)


def test_postgres_down_between_batches_is_retried_with_backoff(
    make_topics: MakeTopics, private_postgres: LocalPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    # Postgres goes away while the materializer is idle; a few records arrive. Their
    # write fails on the writer thread and must then be retried in the foreground, with
    # backoff. Until 2026-11-29 it went back to the writer thread every poll (~20 ms):
    # dozens of failed writes per second of outage, and fetching never paused.
    caplog.set_level(logging.WARNING, logger="consumers.materializer")
    settings = on_private_postgres(make_topics(partitions=4), private_postgres)
    events = random_events(random.Random(15), pages=6, users=30, n=600)
    produce(settings, events[:400])
    config = BatchConfig(max_records=300, max_wait=0.05, backoff_initial=0.2, backoff_max=1)
    group = new_group()
    mat = Materializer.from_settings(settings, group=group, batch=config)
    with running(mat):
        wait_for(lambda: stored_end(settings, group) == 400, timeout=60, what="first offsets")
        private_postgres.stop(mode="immediate")
        produce(settings, events[400:405])
        time.sleep(3)
        on_writer = [r.getMessage() for r in caplog.records if "not committed" in r.getMessage()]
        private_postgres.start()
        produce(settings, events[405:])
        total = len(events)
        wait_for(lambda: stored_end(settings, group) == total, timeout=90, what="all offsets")
    assert 1 <= len(on_writer) <= 2, [m[:80] for m in on_writer]
    assert mat.totals.retries >= 2, "the foreground retried"
    assert_exact(settings, events, events)


def test_static_member_fenced_while_postgres_is_down_stops_with_the_fatal_error(
    make_topics: MakeTopics, private_postgres: LocalPostgres
) -> None:
    # While Postgres is away the loop backs off, polling the consumer. A fatal consumer
    # error met there (another member took this one's instance id) must end the loop with
    # ConsumerFatalError, as it does between batches (`convsync materialize` then
    # rejoins with a new consumer). Until 2026-11-29 backoff dropped it and kept retrying
    # Postgres on a consumer that no longer owned anything.
    settings = on_private_postgres(make_topics(partitions=2), private_postgres)
    events = random_events(random.Random(16), pages=4, users=20, n=200)
    produce(settings, events[:100])
    group = new_group()
    config = BatchConfig(max_records=300, max_wait=0.05, backoff_initial=0.2, backoff_max=1)
    overrides = {"group.instance.id": "fenced-in-backoff"}
    mat = Materializer.from_settings(
        settings, group=group, batch=config, instance_id=overrides["group.instance.id"]
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            mat.run()
        except BaseException as e:  # noqa: BLE001 - the test reads it
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    rival = make_consumer(settings, group, **overrides)
    try:
        wait_for(lambda: stored_end(settings, group) == 100, timeout=60, what="first offsets")
        private_postgres.stop(mode="immediate")
        produce(settings, events[100:110])
        wait_for(lambda: mat.totals.retries >= 2, timeout=30, what="backoff")
        rival.subscribe([settings.topic("events")])
        deadline = time.monotonic() + 60
        while thread.is_alive() and time.monotonic() < deadline:
            rival.poll(0.5)
        assert not thread.is_alive(), "the fenced member kept backing off"
    finally:
        mat.stop()
        thread.join(30)
        rival.close()
    assert len(errors) == 1 and isinstance(errors[0], ConsumerFatalError), errors


def test_kafka_unreachable_then_back(private_kafka: KafkaCluster, make_schema: MakeSchema) -> None:
    rng = random.Random(14)
    settings = make_schema().model_copy(
        update={"kafka_bootstrap": private_kafka.bootstrap, "partitions": 3}
    )
    ensure_topics(admin_client(settings), topic_specs(settings))
    events = random_events(rng, pages=6, users=50, n=3_000)
    delivered = with_duplicates(rng, events, 0.1)
    half = len(delivered) // 2
    produce(settings, delivered[:half])
    group = new_group()
    mat = Materializer.from_settings(
        settings, group=group, batch=BatchConfig(max_records=300, max_wait=0.05)
    )
    with running(mat) as thread:
        wait_for(lambda: stored_end(settings, group) == half, timeout=60, what="first half")
        private_kafka.stop_node(1, kill=True)
        time.sleep(4)
        assert thread.is_alive()
        private_kafka.start_node(1)
        produce(settings, delivered[half:])
        wait_for(lambda: stored_end(settings, group) == len(delivered), timeout=90, what="offsets")
    assert_exact(settings, events, delivered)
