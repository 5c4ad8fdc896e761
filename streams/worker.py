"""Run the change-stream app in a faust Worker, after making sure its topics exist."""

from __future__ import annotations

import logging
from dataclasses import replace

import faust

from convsync.kafka import TopicSpec, admin_client, check_reachable, ensure_topics, topic_specs
from convsync.settings import Settings
from streams.app import StreamConfig, app_id, make_app
from streams.faust_fixes import check as check_faust_fixes

log = logging.getLogger(__name__)


def prepare(settings: Settings, config: StreamConfig) -> StreamConfig:
    """Create the convsync topics if missing; return ``config`` with a replication factor.

    The broker refuses to auto-create topics, so the sink and dead-letter topics are
    created here; faust creates its own table changelog topics through its admin client.
    A ``replication_factor`` of 0 means min(3, brokers). Raises :class:`RetryableError`
    when Kafka is unreachable and :class:`StackError` when a topic cannot be created.
    """
    brokers = check_reachable(settings, timeout=10.0)
    rf = config.replication_factor or min(3, brokers)
    ensure_topics(admin_client(settings), topic_specs(settings, replication_factor=rf))
    return replace(config, replication_factor=rf)


def changelog_specs(app: faust.App, settings: Settings, config: StreamConfig) -> list[TopicSpec]:
    """Return the specs of the app's table changelog topics, as faust would create them."""
    specs = []
    for table in app.tables.values():
        topic = table.changelog_topic
        policies = [
            p for p, on in (("compact", topic.compacting), ("delete", topic.deleting)) if on
        ]
        conf = {"cleanup.policy": ",".join(policies) or "compact"}
        if topic.retention:
            conf["retention.ms"] = str(int(topic.retention * 1000))
        specs.append(
            TopicSpec(
                topic.get_topic_name(),
                topic.partitions or settings.partitions,
                config.replication_factor or 1,
                conf,
            )
        )
    return specs


def ensure_changelogs(app: faust.App, settings: Settings, config: StreamConfig) -> None:
    """Create the changelog topics before the worker starts.

    faust creates them itself, but asynchronously: under load the first events can
    arrive before the brokers know the new topics, and faust then fails the table write
    with PartitionsMismatch ("changelog topic has 0 partitions"). Created here, they
    exist with leaders before any event is read. Raises :class:`StackError`.
    """
    ensure_topics(admin_client(settings), changelog_specs(app, settings, config))


def run_worker(settings: Settings, config: StreamConfig, *, log_level: str = "INFO") -> int:
    """Run a worker until it is stopped (SIGINT/SIGTERM); return its exit code.

    Raises :class:`streams.faust_fixes.FaustFixError` before anything starts when the
    installed faust-streaming or aiokafka lacks a name a fix relies on.
    """
    check_faust_fixes()
    config = prepare(settings, config)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    app = make_app(settings, config)
    ensure_changelogs(app, settings, config)
    log.info(
        "streams worker %s: %s -> %s, web http://%s:%s/stats/",
        app_id(settings),
        settings.topic("events"),
        settings.topic("conversations"),
        config.web_host,
        config.web_port,
    )
    # The command's logging stays: faust's own set-up would replace the root handlers,
    # and with them the filter that keeps secrets (the SASL and database passwords)
    # out of the log.
    logging.getLogger().setLevel(log_level.upper())
    worker = faust.Worker(
        app, loglevel=log_level, quiet=True, redirect_stdouts=False, override_logging=False
    )
    # faust's terminal spinner puts the root logger at DEBUG (to spin on every record)
    # whenever the level is WARNING or above: every aiokafka debug line would then be
    # formatted and dropped, a tenth of the worker's CPU.
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    except SystemExit as e:
        return int(e.code or 0)
    return 0
