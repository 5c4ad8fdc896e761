"""``convsync up`` / ``down`` / ``env``: the local Kafka + Postgres stack in a state folder."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from pydantic import SecretStr

from convsync.db import connect
from convsync.errors import RetryableError, StackError
from convsync.kafka import admin_client, check_reachable, ensure_topics, topic_specs
from convsync.settings import Settings
from deploy.kafka_local import KafkaCluster
from deploy.postgres_local import LocalPostgres
from schemas.migrate import apply_migrations

log = logging.getLogger(__name__)

DEFAULT_KAFKA_PORT: Final = 9092
DEFAULT_PG_PORT: Final = 55432
STACK_FILE: Final = "stack.json"


@dataclass(frozen=True, slots=True)
class StackInfo:
    """What ``up`` started, written to ``<state>/stack.json``."""

    state_dir: str
    brokers: int
    kafka_port: int
    kafka_bootstrap: str
    pg_port: int
    database_url: str
    topic_prefix: str
    partitions: int
    replication_factor: int

    def exports(self) -> dict[str, str]:
        """Return the ``CONVSYNC_*`` settings that reach this stack."""
        return {
            "CONVSYNC_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "CONVSYNC_DATABASE_URL": self.database_url,
            "CONVSYNC_TOPIC_PREFIX": self.topic_prefix,
            "CONVSYNC_PARTITIONS": str(self.partitions),
            "CONVSYNC_STATE_DIR": self.state_dir,
        }


def load_info(state_dir: Path) -> StackInfo | None:
    """Return the stack recorded in ``state_dir``, or None."""
    path = state_dir / STACK_FILE
    if not path.exists():
        return None
    try:
        return StackInfo(**json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise StackError(f"{path} is corrupt: {e}") from e


def stack_settings(state_dir: Path) -> Settings:
    """Return settings from the environment, falling back to the stack in ``state_dir``.

    The environment wins: pydantic-settings gives init kwargs priority, so the stack's
    values are passed only for settings that the environment leaves unset.
    """
    info = load_info(state_dir)
    defaults: dict[str, object] = {}
    if info is not None:
        defaults = {
            "kafka_bootstrap": info.kafka_bootstrap,
            "database_url": info.database_url,
            "topic_prefix": info.topic_prefix,
            "partitions": info.partitions,
        }
    overrides = {k: v for k, v in defaults.items() if f"CONVSYNC_{k.upper()}" not in os.environ}
    return Settings(**overrides)  # type: ignore[arg-type]


def wait_until(check: str, fn: Callable[[], None], *, timeout: float) -> None:
    """Call ``fn`` until it stops raising RetryableError; raise StackError after timeout."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            fn()
        except RetryableError as e:
            last = e
            time.sleep(0.5)
        else:
            return
    raise StackError(f"{check} did not answer within {timeout:.0f}s: {last}")


def up(
    *,
    state_dir: Path,
    brokers: int = 1,
    kafka_port: int | None = None,
    pg_port: int | None = None,
    topic_prefix: str = "convsync",
    partitions: int = 12,
    timeout: float = 120.0,
) -> StackInfo:
    """Start (or find running) Kafka and Postgres, create topics, apply migrations.

    Ports left as None are those recorded in ``state_dir`` by an earlier ``up``, else the
    defaults (9092, 55432). Idempotent: a second call starts nothing new. Raises
    :class:`StackError` when a server cannot be started or does not answer in time, or
    when a different stack already runs in ``state_dir``.
    """
    if brokers not in (1, 3):
        raise StackError("--brokers must be 1 or 3")
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    existing = load_info(state_dir)
    if kafka_port is None:
        kafka_port = existing.kafka_port if existing else DEFAULT_KAFKA_PORT
    if pg_port is None:
        pg_port = existing.pg_port if existing else DEFAULT_PG_PORT
    if existing and existing.brokers != brokers:
        other = KafkaCluster(state_dir / "kafka", existing.brokers, existing.kafka_port)
        if other.running():
            raise StackError(
                f"a {existing.brokers}-broker stack runs in {state_dir}; `convsync down` first"
            )
    kafka_root = state_dir / ("kafka" if brokers == 1 else "kafka-3")
    cluster = KafkaCluster(kafka_root, brokers, kafka_port)
    pg = LocalPostgres(state_dir, pg_port)
    info = StackInfo(
        state_dir=str(state_dir),
        brokers=brokers,
        kafka_port=kafka_port,
        kafka_bootstrap=cluster.bootstrap,
        pg_port=pg_port,
        database_url=pg.url,
        topic_prefix=topic_prefix,
        partitions=partitions,
        replication_factor=cluster.replication_factor,
    )
    # Written first so `down` can find what a half-finished `up` started.
    (state_dir / STACK_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n")

    pg.start()
    cluster.start()
    settings = Settings(
        kafka_bootstrap=cluster.bootstrap,
        database_url=SecretStr(pg.url),
        topic_prefix=topic_prefix,
        partitions=partitions,
    )

    def kafka_ready() -> None:
        n = check_reachable(settings)
        if n < brokers:
            raise RetryableError(f"{n}/{brokers} brokers registered")

    wait_until("Kafka", kafka_ready, timeout=timeout)
    created = ensure_topics(
        admin_client(settings),
        topic_specs(settings, replication_factor=cluster.replication_factor),
    )
    if created:
        log.info("created topics %s", ", ".join(created))
    with connect(settings) as conn:
        applied = apply_migrations(conn, schema=settings.db_schema)
    if applied:
        log.info("applied migrations %s", ", ".join(applied))
    return info


def down(*, state_dir: Path) -> list[str]:
    """Stop everything ``up`` started in ``state_dir``; return what was stopped."""
    state_dir = state_dir.resolve()
    info = load_info(state_dir)
    stopped: list[str] = []
    pg_port = info.pg_port if info else DEFAULT_PG_PORT
    kafka_port = info.kafka_port if info else DEFAULT_KAFKA_PORT
    for root, n in ((state_dir / "kafka", 1), (state_dir / "kafka-3", 3)):
        if root.exists():
            cluster = KafkaCluster(root, n, kafka_port)
            ids = cluster.running()
            cluster.stop()
            stopped += [f"kafka node {i}" for i in ids]
    pg = LocalPostgres(state_dir, pg_port)
    if pg.running():
        pg.stop()
        stopped.append("postgres")
    return stopped
