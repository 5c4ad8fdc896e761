"""`convsync mapper`, `convsync mapper-rewind` and `convsync relay`: the webhook's
components behind the log (deliveries -> events; verified bodies -> the old inbox)."""

from __future__ import annotations

import asyncio
import datetime as dt
import faulthandler
import logging
import signal
import threading
from typing import Annotated

import typer

log = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    """Add these components' commands to ``app``."""
    app.command()(mapper)
    app.command("mapper-rewind")(mapper_rewind)
    app.command()(relay)


def mapper(
    group: Annotated[str, typer.Option(help="Consumer group.")] = "convsync-mapper",
    instance: Annotated[
        str | None,
        typer.Option(
            help="This instance's name in its transactional id, stable across restarts and "
            "distinct per instance [default: the host name].",
            envvar="CONVSYNC_MAPPER_INSTANCE",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Deliveries per transaction.")] = 500,
    metrics_addr: Annotated[
        str | None,
        typer.Option(
            help="host:port of /metrics and /healthz, or 'off' [default: 127.0.0.1:9466].",
            envvar="CONVSYNC_MAPPER_METRICS_ADDR",
        ),
    ] = None,
) -> None:
    """Map <prefix>.deliveries into <prefix>.events, exactly once (Kafka transactions)."""
    from rich.console import Console

    from cli.common import load_settings
    from convsync.errors import ConsumerFatalError, ConvsyncError
    from convsync.observe import start_observer
    from producers.webhook import mapper as mapping_loop

    console = Console(stderr=True)
    settings = load_settings()
    try:
        start_observer(
            metrics_addr,
            default="127.0.0.1:9466",
            setting="CONVSYNC_MAPPER_METRICS_ADDR",
            heartbeat=mapping_loop.HEARTBEAT,
            name="mapper",
        )
    except ConvsyncError as e:
        console.print(f"[red]mapper failed:[/] {e}")
        raise typer.Exit(2) from e
    config = mapping_loop.MapperConfig.from_settings(
        settings, group=group, instance=instance, max_records=batch_size
    )
    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # `kill -USR1 PID` writes every thread's stack to stderr (its log): a loop that
    # /healthz says is stuck can be looked into without stopping it.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        totals = mapping_loop.Mapper(config).run(stop)
    except ConsumerFatalError as e:
        # The open transaction is aborted by the next instance (same transactional id).
        console.print(f"[red]mapper failed:[/] {e}")
        raise typer.Exit(1) from e
    console.print(
        f"mapper stopped: {totals.deliveries} deliveries, {totals.events} events, "
        f"{totals.dead_letters} dead letters, {totals.transactions} transactions "
        f"({totals.aborts} aborted)"
    )


def mapper_rewind(
    to_time: Annotated[
        str | None,
        typer.Option(help="ISO 8601 time (UTC if no zone): replay deliveries from then."),
    ] = None,
    to_offset: Annotated[
        int | None, typer.Option(min=0, help="Replay from this offset of every partition.")
    ] = None,
    partition: Annotated[
        list[int] | None, typer.Option(help="Only these partitions (repeat the option).")
    ] = None,
    group: Annotated[str, typer.Option(help="The mappers' consumer group.")] = "convsync-mapper",
) -> None:
    """Move the (stopped) mappers back on <prefix>.deliveries, to map them again."""
    from rich.console import Console

    from cli.common import load_settings
    from convsync.errors import ConvsyncError
    from producers.webhook.rewind import rewind

    console = Console(stderr=True)
    if (to_time is None) == (to_offset is None):
        console.print("[red]give exactly one of --to-time and --to-offset[/]")
        raise typer.Exit(2)
    when_ms = None
    if to_time is not None:
        try:
            when = dt.datetime.fromisoformat(to_time)
        except ValueError as e:
            console.print(f"[red]--to-time is not an ISO 8601 time:[/] {to_time}")
            raise typer.Exit(2) from e
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        when_ms = int(when.timestamp() * 1000)
    settings = load_settings()
    try:
        moved = rewind(
            settings.kafka_config(),
            settings.topic("deliveries"),
            group,
            to_time_ms=when_ms,
            to_offset=to_offset,
            partitions=partition,
        )
    except ConvsyncError as e:
        console.print(f"[red]mapper-rewind failed:[/] {e}")
        raise typer.Exit(1) from e
    for p, offset in sorted(moved.items()):
        typer.echo(f"{settings.topic('deliveries')}[{p}] -> {offset}")


def relay(
    group: Annotated[str, typer.Option(help="Consumer group.")] = "convsync-relay",
    max_attempts: Annotated[
        int, typer.Option(min=1, help="Attempts per body before it goes to <prefix>.relay-dead.")
    ] = 8,
    metrics_addr: Annotated[
        str | None,
        typer.Option(
            help="host:port of /metrics and /healthz, or 'off' [default: 127.0.0.1:9467].",
            envvar="CONVSYNC_RELAY_METRICS_ADDR",
        ),
    ] = None,
) -> None:
    """Forward every verified webhook body on <prefix>.relay to CONVSYNC_RELAY_URL."""
    from rich.console import Console

    from cli.common import load_settings
    from convsync.errors import ConvsyncError
    from convsync.observe import start_observer
    from producers.webhook import relay as relaying

    console = Console(stderr=True)
    settings = load_settings()
    try:
        config = relaying.RelayConfig.from_settings(
            settings, group=group, max_attempts=max_attempts
        )
        start_observer(
            metrics_addr,
            default="127.0.0.1:9467",
            setting="CONVSYNC_RELAY_METRICS_ADDR",
            heartbeat=relaying.HEARTBEAT,
            name="relay",
        )
    except ConvsyncError as e:
        console.print(f"[red]relay failed:[/] {e}")
        raise typer.Exit(2) from e

    async def main() -> relaying.Totals:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await relaying.Relay(config).run(stop)

    try:
        totals = asyncio.run(main())
    except ConvsyncError as e:
        console.print(f"[red]relay failed:[/] {e}")
        raise typer.Exit(1) from e
    console.print(
        f"relay stopped: {totals.forwarded} forwarded, {totals.retries} retries, {totals.dead} dead"
    )
