"""Scenario 3: the materializer's links to Postgres and Kafka cut; Postgres restarted."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from convsync.db import connect
from convsync.kafka import admin_client, ensure_topics, topic_specs
from convsync.settings import Settings
from deploy.kafka_local import KafkaCluster
from deploy.postgres_local import LocalPostgres
from deploy.simulator.webhooks import WebhookSender
from schemas.migrate import apply_migrations
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
from tests.fault.proxy import TcpProxy

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.integration]

PAGES = ["301", "302", "303", "304"]
CUT = 10.0


def test_links_cut_and_postgres_restarted(
    private_kafka: KafkaCluster, private_postgres: LocalPostgres, scenario_logs: Path
) -> None:
    began = time.monotonic()
    settings = Settings(
        kafka_bootstrap=private_kafka.bootstrap,
        database_url=SecretStr(private_postgres.url),
        topic_prefix="fault-outages",
        db_schema="fault_outages",
        partitions=6,
    )
    ensure_topics(admin_client(settings), topic_specs(settings))
    with connect(settings) as conn:
        apply_migrations(conn, schema=settings.db_schema)
    pg_proxy = TcpProxy("127.0.0.1", private_postgres.port).start()
    proxied = private_postgres.url.replace(f":{private_postgres.port}/", f":{pg_proxy.port}/")
    bodies = make_bodies(WebhookSender(SECRET, seed=3), PAGES, 7500)
    faults: list[dict[str, object]] = []
    try:
        env_for = {"materializer": {"CONVSYNC_DATABASE_URL": proxied}}
        with Pipeline(settings, scenario_logs, env_for=env_for) as pipe:
            pipe.start("gateway", "materializer")
            progress = Progress(settings, pipe.group)
            progress.start()
            load = Load(f"{pipe.gateway_url}/webhook", bodies, rate=150, give_up_after=240)
            load.start()
            time.sleep(6)
            # 1. The materializer's link to Postgres is cut for 10 s (Postgres itself is up).
            t = time.monotonic()
            pg_proxy.cut()
            time.sleep(CUT)
            pg_proxy.restore()
            faults.append(
                {
                    "fault": "materializer-Postgres link cut 10 s",
                    "end": time.monotonic(),
                    "len": time.monotonic() - t,
                }
            )
            time.sleep(6)
            # 2. Postgres restarts (immediate shutdown: no checkpoint, in-flight work lost).
            t = time.monotonic()
            private_postgres.stop(mode="immediate")
            time.sleep(3)
            private_postgres.start()
            faults.append(
                {
                    "fault": "Postgres restart (immediate)",
                    "end": time.monotonic(),
                    "len": time.monotonic() - t,
                }
            )
            time.sleep(6)
            # 3. Kafka unreachable for 10 s (SIGKILL of the broker, then back).
            t = time.monotonic()
            private_kafka.stop_node(1, kill=True)
            time.sleep(CUT)
            private_kafka.start_node(1)
            faults.append(
                {
                    "fault": "Kafka down 10 s (SIGKILL, restart)",
                    "end": time.monotonic(),
                    "len": time.monotonic() - t,
                }
            )
            load.join(360)
            wait_caught_up(settings, pipe.group, timeout=240)
            progress.stop()
            dead = pipe.dead()
            result = check(settings, truth_of(load.accepted))
    finally:
        pg_proxy.stop()
    mat_log = (scenario_logs / "materializer.log").read_text(errors="replace")
    files, _lines, hits = scan_secrets(pipe.logs(), pipe.secrets())
    write_result(
        3,
        "Outages: Postgres link cut, Postgres restart, Kafka down",
        done=(
            "A Kafka broker and a Postgres server of the test's own (so they can be stopped), "
            "a gateway and a materializer as subprocesses; the materializer reaches Postgres "
            "through tests/fault/proxy.py, a small asyncio TCP proxy. While webhooks flow at "
            "150 bodies/s (retried like Meta): the proxy drops every connection and refuses "
            "new ones for 10 s; then Postgres restarts (immediate shutdown); then the broker "
            "is SIGKILLed and restarted 10 s later. A Kafka cut through the proxy is not "
            "possible with this stack: a broker advertises its own address, so clients reach "
            "it around a bootstrap proxy; the broker outage covers the same failure for the "
            "materializer and the gateway (503 answers, retried)."
        ),
        scale="7,500 bodies at 150/s (about 50 s), three 3-10 s outages",
        figures={
            **load_figures(load),
            "faults": [f"{f['fault']} ({float(str(f['len'])):.1f} s)" for f in faults],
            "catch-up after each fault (s)": [
                progress.recovery(float(str(f["end"]))) for f in faults
            ],
            "proxy connections forwarded / refused": f"{pg_proxy.accepted} / {pg_proxy.refused}",
            "materializer retries logged": mat_log.count("retry"),
            "components dead at the end": dead,
            **comparison_figures(result),
            "log files scanned / secret hits": f"{files} / {len(hits)}",
        },
        seconds=time.monotonic() - began,
    )
    assert load.gave_up == 0 and dead == [] and hits == []
    assert pg_proxy.refused > 0
    assert_exact(result)
