"""The private-server fixtures really start, stop and restart their own servers."""

from __future__ import annotations

import psycopg
import pytest

from convsync.errors import RetryableError
from convsync.kafka import check_reachable
from convsync.settings import Settings
from deploy.kafka_local import KafkaCluster
from deploy.postgres_local import LocalPostgres

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_private_kafka_stops_and_starts(private_kafka: KafkaCluster) -> None:
    settings = Settings(kafka_bootstrap=private_kafka.bootstrap)
    assert check_reachable(settings) == 1
    private_kafka.stop_node(1, kill=True)
    assert private_kafka.running() == []
    with pytest.raises(RetryableError):
        check_reachable(settings, timeout=2)


def test_private_postgres_restarts(private_postgres: LocalPostgres) -> None:
    with psycopg.connect(private_postgres.url) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
    private_postgres.restart(mode="immediate")
    with psycopg.connect(private_postgres.url) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
