"""The faust app: fold ``<prefix>.events`` into ``<prefix>.conversations`` change records."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from convsync.observe import Heartbeat
from convsync.settings import Settings
from streams.agent import FoldAgent
from streams.broker import broker_credentials, broker_urls
from streams.faust_fixes import FixedApp, RawSchema
from streams.faust_intake import Intake
from streams.folder import Folder
from streams.stats import PageStats, StatsCollector
from streams.web import LagCollector, add_views


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """How one worker runs (the topics and broker come from :class:`Settings`)."""

    web_port: int = 6066
    web_host: str = "127.0.0.1"
    data_dir: Path = Path(".convsync/streams")
    replication_factor: int = 1
    batch_size: int = 1000
    batch_within: float = 0.2  # seconds to wait for a batch to fill
    commit_interval: float = 1.0
    processing_guarantee: str = "at_least_once"
    # /healthz answers 503 once a batch has been folding this long (seconds).
    stale_after: float = 120.0


def app_id(settings: Settings) -> str:
    """Return the faust app id: consumer group and table-topic prefix, from the topic prefix."""
    return f"{settings.topic_prefix}.streams"


def make_app(settings: Settings, config: StreamConfig) -> faust.App:
    """Return the faust app for ``settings`` (not started; run it with a faust Worker).

    Raises :class:`ConfigError` when ``settings.kafka_extra`` cannot be given to aiokafka.
    """
    app = FixedApp(
        app_id(settings),
        broker=broker_urls(settings),
        # CONVSYNC_KAFKA_EXTRA (SASL/TLS) for every aiokafka client of the app.
        broker_credentials=broker_credentials(settings),
        store="memory://",
        processing_guarantee=config.processing_guarantee,
        topic_partitions=settings.partitions,
        topic_replication_factor=config.replication_factor,
        table_standby_replicas=0,
        datadir=str(config.data_dir),
        web_enabled=True,
        web_port=config.web_port,
        web_bind=config.web_host,
        web_host=config.web_host,
        producer_acks=-1,
        # Bigger batches: aiokafka blocks a send while a full batch of its partition is
        # in flight, and a batch of ours emits hundreds of records per partition.
        producer_max_batch_size=512 * 1024,
        producer_linger=0.005,
        broker_commit_interval=config.commit_interval,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        consumer_auto_offset_reset="earliest",
    )
    stats = PageStats(app, partitions=settings.partitions)
    folder = Folder(app, settings, stats)

    @app.on_before_shutdown.connect
    def close_sender(_app: Any, /, *_: Any, signal: Any, **__: Any) -> Awaitable[None]:
        return folder.sender.close()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats))
    registry.register(LagCollector(app, app_id(settings), settings.topic("events")))
    source = app.topic(
        settings.topic("events"),
        schema=RawSchema(key_serializer="raw", value_serializer="raw"),  # F14
    )
    # F15: the fold's events a fetch at a time (streams/faust_intake.py).
    intake = Intake(app, settings.topic("events"), config.batch_size)
    app.consumer_hooks = [intake.install]
    agent = FoldAgent(
        folder,
        intake,
        Heartbeat(config.stale_after),
        size=config.batch_size,
        within=config.batch_within,
        guarantee=config.processing_guarantee,
    )

    @app.agent(source, name="fold")
    async def fold(stream: faust.StreamT[bytes]) -> None:
        await agent.run(stream)

    add_views(
        app,
        registry=registry,
        health=agent.health,
        folding=agent.busy,
        stats=lambda: {"emitted": folder.emitted, **stats.snapshot()},
    )
    return app
