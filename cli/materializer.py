"""`convsync materialize` and `convsync replay`: the Postgres projection."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from typing import Annotated

import typer

log = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    """Add this component's commands to ``app``."""
    app.command()(materialize)
    app.command()(replay)


def materialize(
    group: Annotated[str, typer.Option(help="Consumer group.")] = "convsync-materializer",
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Records per transaction, at most.")
    ] = None,
    batch_ms: Annotated[
        int | None, typer.Option(min=0, help="Flush a batch this many ms after its first record.")
    ] = None,
    batch_mib: Annotated[
        int | None,
        typer.Option(min=1, help="Flush a batch once its record values reach this many MiB."),
    ] = None,
    writers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Postgres connections writing each batch in parallel, split by partition.",
        ),
    ] = None,
    metrics_addr: Annotated[
        str | None,
        typer.Option(
            help="host:port of /metrics and /healthz, or 'off' [default: 127.0.0.1:9463].",
            envvar="CONVSYNC_MATERIALIZER_METRICS_ADDR",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Same as --metrics-addr 127.0.0.1:PORT.")
    ] = None,
    stale_after: Annotated[
        float,
        typer.Option(
            min=1,
            help="/healthz answers 503 once the consume loop has not gone round this long (s).",
            envvar="CONVSYNC_MATERIALIZER_STALE_AFTER",
        ),
    ] = 120.0,
    instance_id: Annotated[
        str | None,
        typer.Option(
            help="Static group membership id (group.instance.id): a restarted member with "
            "the same id gets its partitions back at once, without a rebalance."
        ),
    ] = None,
) -> None:
    """Project <prefix>.events into Postgres, exactly once, until SIGTERM/SIGINT."""
    from rich.console import Console

    from cli.common import load_settings
    from consumers.materializer import BatchConfig, Materializer, MaterializerConfig
    from convsync.errors import ConsumerFatalError, ConvsyncError
    from convsync.gctune import tune_for_batches

    settings = load_settings()
    tune_for_batches()
    defaults = BatchConfig()
    from consumers.materializer import metrics as mat_metrics
    from convsync.observe import Heartbeat, start_observer

    if metrics_port is not None:
        metrics_addr = f"127.0.0.1:{metrics_port}"
    mat_metrics.HEARTBEAT = Heartbeat(stale_after)
    try:
        served = start_observer(
            metrics_addr,
            default="127.0.0.1:9463",
            setting="CONVSYNC_MATERIALIZER_METRICS_ADDR",
            heartbeat=mat_metrics.HEARTBEAT,
            name="materializer",
        )
    except ConvsyncError as e:
        Console(stderr=True).print(f"[red]materialize failed:[/] {e}")
        raise typer.Exit(2) from e
    # The materializer gets what it needs of the settings, and nothing else.
    config = MaterializerConfig.from_settings(
        settings,
        group=group,
        batch=BatchConfig(
            max_records=batch_size or defaults.max_records,
            max_wait=defaults.max_wait if batch_ms is None else batch_ms / 1000,
            max_bytes=defaults.max_bytes if batch_mib is None else batch_mib * 1024 * 1024,
            writers=writers or defaults.writers,
        ),
        instance_id=instance_id,
        report_lag=served is not None,
    )
    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while True:
        mat = Materializer(config)
        try:
            totals = mat.run(stop=stop)
        except ConsumerFatalError as e:
            # The dead consumer's batch in flight committed or not (offsets live in
            # Postgres with the rows); a new member resumes from there.
            if stop.is_set():
                raise typer.Exit(1) from e
            log.warning("%s; rejoining the group with a new consumer in 1s", e)
            stop.wait(1.0)
            continue
        except ConvsyncError as e:
            Console(stderr=True).print(f"[red]materialize failed:[/] {e}")
            raise typer.Exit(1) from e
        break
    Console(stderr=True).print(
        f"materializer stopped: {totals.records} records, {totals.inserted} new events, "
        f"{totals.dead_letters} dead letters, {totals.batches} batches"
    )


def replay(
    into: Annotated[
        str | None, typer.Option("--into", help="Fresh schema to build (default: a new name).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Records per transaction, at most.")
    ] = None,
) -> None:
    """Rebuild the projection from offset 0 into a fresh schema, then print checksums."""
    from rich.console import Console

    from cli.common import load_settings
    from consumers.materializer import BatchConfig, checksum
    from consumers.materializer import replay as run_replay
    from convsync.errors import ConvsyncError
    from convsync.gctune import tune_for_batches

    settings = load_settings()
    tune_for_batches()
    schema = into or f"{settings.db_schema}_replay_{time.strftime('%Y%m%d%H%M%S')}"
    config = BatchConfig(max_records=batch_size) if batch_size else None
    console = Console(stderr=True)
    try:
        result = run_replay(settings, into=schema, config=config)
        rebuilt = checksum(settings, schema)
        live = checksum(settings, settings.db_schema)
    except ConvsyncError as e:
        console.print(f"[red]replay failed:[/] {e}")
        raise typer.Exit(1) from e
    console.print(
        f"replayed {result.totals.records} records into {schema} "
        f"({result.totals.inserted} events, {result.totals.dead_letters} dead letters)"
    )
    sys.stdout.write(f"{schema} {rebuilt}\n{settings.db_schema} {live}\n")
    if rebuilt != live:
        console.print("[yellow]checksums differ (the live projection may be behind or ahead)[/]")
