"""`convsync up --sasl`: a SCRAM-SHA-512 broker that nobody reaches without the generated
password, and the whole pipeline (gateway, crawler, materializer, streams) through it.

The stack is the test's own, in a tmp folder on free ports. As root, that folder is in
root's 0700 pytest folder, which the postgres user cannot enter: `up` and `demo` must
work there too.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import TopicPartition

from convsync.errors import RetryableError
from convsync.kafka import check_reachable, make_consumer, read_watermarks
from convsync.settings import Settings
from deploy._files import read_private
from deploy.ports import free_ports
from deploy.postgres_local import LocalPostgres
from deploy.stack import KAFKA_PASSWORD_FILE
from tests.fixtures.stack import free_port_pair

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# Settings must come from the test's stack only, not from the shell's shared stack.
ENV = {
    k: v
    for k, v in os.environ.items()
    if k.removeprefix("CONVSYNC_").lower() not in Settings.model_fields
}


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        cwd=REPO,
        env={**ENV, "COLUMNS": "200"},
    )


class CommandLines(threading.Thread):
    """Watches every process's command line for the secrets while the test runs."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__(daemon=True)
        self.secrets = secrets
        self.hits: list[str] = []
        self.scans = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.5):
            for path in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    line = path.read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                self.hits += [f"{path}: {line[:120]}" for s in self.secrets if s in line]
            self.scans += 1

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def wait_for_keys(
    settings: Settings, topic: str, wanted: int, worker: subprocess.Popen[bytes]
) -> set[bytes]:
    """Read ``topic`` whole, again and again, until it holds ``wanted`` distinct keys."""
    deadline = time.monotonic() + 240
    keys: set[bytes] = set()
    while len(keys) < wanted:
        assert worker.poll() is None, "the streams worker exited"
        assert time.monotonic() < deadline, f"{len(keys)} of {wanted} conversations"
        time.sleep(2)
        consumer = make_consumer(settings, f"test-read-{time.monotonic_ns()}")
        try:
            ends = {}
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                ends[p] = read_watermarks(consumer, TopicPartition(topic, p), timeout=10)[1]
            consumer.assign([TopicPartition(topic, p, 0) for p, end in ends.items() if end])
            pending = {p for p, end in ends.items() if end}
            while pending and time.monotonic() < deadline:
                msg = consumer.poll(1.0)
                if msg is None or msg.error():
                    continue
                keys.add(msg.key() or b"")
                if msg.offset() + 1 >= ends[msg.partition()]:
                    pending.discard(msg.partition())
        finally:
            consumer.close()
    return keys


def test_the_whole_pipeline_runs_through_a_sasl_broker(tmp_path: Path) -> None:
    state = tmp_path / "state"
    kafka_port, pg_port = free_port_pair(), free_port_pair()
    up = cli(
        "up", "--sasl", "--state-dir", str(state), "--kafka-port", str(kafka_port),
        "--pg-port", str(pg_port),
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        kafka_password = read_private(state / KAFKA_PASSWORD_FILE)
        pg_password = read_private(state / "postgres.password")
        secrets = [kafka_password, pg_password]
        for name in (KAFKA_PASSWORD_FILE, "postgres.password"):
            assert (state / name).stat().st_mode & 0o777 == 0o600
        assert not any(s in up.stdout + up.stderr for s in secrets)
        watch = CommandLines(secrets)
        watch.start()

        env = cli("env", "--state-dir", str(state))
        assert env.returncode == 0, env.stderr
        exports = dict(
            shlex.split(line)[1].split("=", 1) for line in env.stdout.splitlines() if line
        )
        extra = json.loads(exports["CONVSYNC_KAFKA_EXTRA"])
        assert extra == {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "convsync",
            "sasl.password": kafka_password,
        }
        assert f":{pg_password}@" in exports["CONVSYNC_DATABASE_URL"]
        bootstrap = exports["CONVSYNC_KAFKA_BOOTSTRAP"]
        settings = Settings(
            kafka_bootstrap=bootstrap,
            kafka_extra=extra,
            database_url=exports["CONVSYNC_DATABASE_URL"],
            topic_prefix="convsync-demo",
        )
        assert check_reachable(settings) == 1
        # Neither the broker nor the controller port answers without the password.
        for address in (bootstrap, f"127.0.0.1:{kafka_port + 1}"):
            with pytest.raises(RetryableError):
                check_reachable(Settings(kafka_bootstrap=address), timeout=3)
        wrong = {**extra, "sasl.password": "not-the-password"}
        with pytest.raises(RetryableError):
            check_reachable(Settings(kafka_bootstrap=bootstrap, kafka_extra=wrong), timeout=3)
        # A plain stack cannot replace the running SASL one behind its back.
        plain = cli("up", "--no-sasl", "--state-dir", str(state))
        assert plain.returncode == 1 and "convsync down" in plain.stderr, plain.stderr

        demo = cli(
            "demo", "--state-dir", str(state), "--pages", "2", "--conversations", "40",
            "--webhooks", "60", "--timeout", "300", "--exit", timeout=420,
        )  # fmt: skip
        out = demo.stdout + demo.stderr
        assert demo.returncode == 0, out[-4000:]
        assert "MATCH" in out
        # The demo stops when Postgres matches, whether or not its streams worker got
        # through every event: a `convsync streams` of the test's own, set up by
        # `convsync env` alone, finishes the change stream through the SASL listener.
        with psycopg.connect(exports["CONVSYNC_DATABASE_URL"]) as conn:
            row = conn.execute("SELECT count(*) FROM convsync_demo.conversations").fetchone()
        assert row is not None and row[0] > 0
        with (tmp_path / "streams.log").open("wb") as out:
            streams = subprocess.Popen(
                [
                    sys.executable, "-m", "cli", "streams", "--web-port", str(free_ports()),
                    "--data-dir", str(tmp_path / "streams"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**ENV, **exports, "CONVSYNC_TOPIC_PREFIX": "convsync-demo"},
            )  # fmt: skip
        try:
            keys = wait_for_keys(settings, settings.topic("conversations"), row[0], streams)
        finally:
            streams.terminate()
            streams.wait(60)
        assert len(keys) == row[0]

        watch.stop()
        assert watch.scans > 0 and watch.hits == []
        logs = [
            tmp_path / "streams.log",
            *state.glob("demo-logs/*.log"),
            *state.glob("kafka-sasl/node-*/kafka.log"),
        ]
        assert len(logs) >= 6
        for path in logs:
            text = path.read_text(errors="replace")
            assert not any(s in text for s in secrets), path
        assert not list(state.glob("kafka-sasl/node-*/format.args"))
    finally:
        down = cli("down", "--state-dir", str(state))
        # As root the cluster lives outside tmp_path (postgres cannot enter it).
        LocalPostgres(state, pg_port).destroy()
    assert down.returncode == 0, down.stdout + down.stderr
