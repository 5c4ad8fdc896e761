"""The private-server fixtures really start, stop and restart their own servers."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from convsync.errors import RetryableError
from convsync.kafka import check_reachable
from convsync.settings import Settings
from deploy.kafka_local import KafkaCluster, ensure_jars
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
        # In a schema of its own: the application role may not create in public.
        conn.execute("CREATE SCHEMA s")
        conn.execute("CREATE TABLE s.t (x int)")
        conn.execute("INSERT INTO s.t VALUES (1)")
    private_postgres.restart(mode="immediate")
    with psycopg.connect(private_postgres.url) as conn:
        assert conn.execute("SELECT x FROM s.t").fetchall() == [(1,)]


def test_cluster_id_starting_with_a_dash_formats(tmp_path: Path) -> None:
    # A base64url cluster id starts with "-" one time in 64; argparse must not take it
    # for an option (this failed `convsync up --brokers 3` once in CI).
    cluster = KafkaCluster(tmp_path, 1, 47000)
    node = cluster.nodes[0]
    node.directory.mkdir(parents=True)
    node.properties.write_text(cluster._properties(node))
    cluster._format(ensure_jars(), node, "-AbCdEfGhIjKlMnOpQrStUw")
    assert (node.data_dir / "meta.properties").exists()
