"""Scenario 1: three brokers (rf 3, min.insync 2); SIGKILL one under webhook load."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from convsync.kafka import admin_client
from convsync.settings import Settings
from deploy.kafka_local import KafkaCluster
from deploy.ports import free_ports
from deploy.postgres_local import LocalPostgres
from deploy.processes import pid_alive
from deploy.simulator.webhooks import WebhookSender
from deploy.stack import load_info
from tests.fault.harness import (
    SECRET,
    Load,
    Pipeline,
    Progress,
    assert_exact,
    check,
    comparison_figures,
    load_figures,
    make_bodies,
    scan_secrets,
    truth_of,
    wait_caught_up,
    write_result,
)

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.integration]

PAGES = [f"10{i}" for i in range(8)]
RATE = 250
SECONDS = 40


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def three_brokers(tmp_path: Path) -> Iterator[tuple[KafkaCluster, Settings]]:
    """`convsync up --brokers 3` on free ports and a tmp state dir; `down` after."""
    state = tmp_path / "stack3"
    kafka_port = free_ports((0, 1, 10, 11, 20, 21))
    pg_port = free_ports((0, 1))
    up = _cli(
        "up",
        "--brokers",
        "3",
        "--state-dir",
        str(state),
        "--kafka-port",
        str(kafka_port),
        "--pg-port",
        str(pg_port),
        "--partitions",
        "6",
        "--topic-prefix",
        "fault-brokers",
    )
    cluster = KafkaCluster(state / "kafka-3", 3, kafka_port)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        info = load_info(state)
        assert info is not None
        settings = Settings(
            kafka_bootstrap=info.kafka_bootstrap,
            database_url=info.database_dsn(),
            topic_prefix=info.topic_prefix,
            partitions=6,
        )
        yield cluster, settings
    finally:
        pids = [p for n in cluster.nodes if (p := cluster.pid(n)) is not None]
        down = _cli("down", "--state-dir", str(state))
        # As root the cluster lives outside the tmp folder: remove it.
        LocalPostgres(state, pg_port).destroy()
        assert down.returncode == 0, down.stdout + down.stderr
        assert not [p for p in pids if pid_alive(p)], "a broker survived `convsync down`"


def test_sigkill_one_of_three_brokers(
    three_brokers: tuple[KafkaCluster, Settings], scenario_logs: Path
) -> None:
    began = time.monotonic()
    cluster, settings = three_brokers
    md = admin_client(settings).list_topics(timeout=10)
    events = md.topics[settings.topic("events")].partitions
    assert len(md.brokers) == 3 and all(len(p.replicas) == 3 for p in events.values())
    bodies = make_bodies(WebhookSender(SECRET, seed=1), PAGES, RATE * SECONDS)
    victim = 2
    with Pipeline(settings, scenario_logs) as pipe:
        pipe.start("gateway", "materializer")
        progress = Progress(settings, pipe.group)
        progress.start()
        load = Load(f"{pipe.gateway_url}/webhook", bodies, rate=RATE, give_up_after=240)
        load.start()
        time.sleep(SECONDS * 0.35)
        pid = cluster.pid(cluster.node(victim))
        assert pid is not None
        killed_at = time.monotonic()
        cluster.stop_node(victim, kill=True)
        assert not pid_alive(pid)
        time.sleep(10)
        cluster.start_node(victim)
        back_at = time.monotonic()
        rejoined = None
        while time.monotonic() < back_at + 90:
            if len(admin_client(settings).list_topics(timeout=5).brokers) == 3:
                rejoined = round(time.monotonic() - back_at, 1)
                break
            time.sleep(0.5)
        load.join(300)
        wait_caught_up(settings, pipe.group, timeout=240)
        progress.stop()
        dead = pipe.dead()
        result = check(settings, truth_of(load.accepted))
        isr = {
            p: len(meta.isrs)
            for p, meta in admin_client(settings)
            .list_topics(timeout=10)
            .topics[settings.topic("events")]
            .partitions.items()
        }
    files, _lines, hits = scan_secrets(pipe.logs(), pipe.secrets())
    write_result(
        1,
        "Three brokers: SIGKILL one under webhook load",
        done=(
            "`convsync up --brokers 3` on free ports and a tmp state dir (its own Kafka "
            "cluster and Postgres): topics with replication factor 3 and min.insync.replicas "
            "2, 6 partitions. A gateway and a materializer as subprocesses; signed webhook "
            f"bodies at {RATE}/s for {SECONDS} s, each retried like Meta until answered 200. "
            f"Broker {victim} is SIGKILLed at 35% of the run and restarted 10 s later."
        ),
        scale=f"{RATE} bodies/s for {SECONDS} s (issue: 500 req/s for 60 s)",
        figures={
            **load_figures(load),
            "broker killed at (s into the load)": round(killed_at - load.started, 1),
            "seconds until the broker rejoined the cluster": rejoined,
            "materializer catch-up after the kill / the restart (s)": [
                progress.recovery(killed_at + 0.5),
                progress.recovery(back_at),
            ],
            "in-sync replicas per events partition at the end": sorted(isr.values()),
            "components dead at the end": dead,
            **comparison_figures(result),
            "log files scanned / secret hits": f"{files} / {len(hits)}",
        },
        seconds=time.monotonic() - began,
    )
    assert load.gave_up == 0 and dead == [] and hits == []
    assert rejoined is not None
    assert_exact(result)
