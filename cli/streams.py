"""`convsync streams`: the faust conversation change stream."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add this component's commands to ``app``."""

    @app.command()
    def streams(
        metrics_addr: Annotated[
            str | None,
            typer.Option(
                help="host:port of the web view: /metrics, /healthz, /stats/ "
                "[default: 127.0.0.1:9464].",
                envvar="CONVSYNC_STREAMS_METRICS_ADDR",
            ),
        ] = None,
        web_port: Annotated[
            int | None, typer.Option(help="Port of the web view (overrides --metrics-addr's).")
        ] = None,
        web_host: Annotated[
            str | None,
            typer.Option(help="Address of the web view (overrides --metrics-addr's)."),
        ] = None,
        stale_after: Annotated[
            float,
            typer.Option(
                min=1,
                help="/healthz answers 503 once a batch has been folding this long (s).",
                envvar="CONVSYNC_STREAMS_STALE_AFTER",
            ),
        ] = 120.0,
        data_dir: Annotated[
            Path | None, typer.Option(help="faust data folder (default <state-dir>/streams).")
        ] = None,
        replication_factor: Annotated[
            int | None,
            typer.Option(min=1, help="Of faust's table topics (default: min(3, brokers))."),
        ] = None,
        batch_size: Annotated[int, typer.Option(min=1, help="Events folded per batch.")] = 1000,
        guarantee: Annotated[
            str,
            typer.Option(help="faust processing_guarantee: at_least_once or exactly_once."),
        ] = "at_least_once",
        log_level: Annotated[
            str, typer.Option(help="Log level of the worker.", envvar="CONVSYNC_LOG_LEVEL")
        ] = "INFO",
    ) -> None:
        """Run the faust worker publishing conversation changes and per-page statistics."""
        from cli.common import console, load_settings
        from convsync.errors import ConfigError, ConvsyncError
        from convsync.observe import parse_addr
        from streams.app import StreamConfig
        from streams.worker import run_worker

        try:
            setting = "CONVSYNC_STREAMS_METRICS_ADDR"
            # faust always serves its web view: 'off' is not an address here.
            addr = parse_addr(metrics_addr or "127.0.0.1:9464", setting=setting)
            if addr is None:
                raise ConfigError(f"{setting}: the streams worker's web view cannot be off")
            settings = load_settings()
            config = StreamConfig(
                web_port=addr[1] if web_port is None else web_port,
                web_host=addr[0] if web_host is None else web_host,
                stale_after=stale_after,
                data_dir=data_dir or settings.state_dir / "streams",
                replication_factor=replication_factor or 0,
                batch_size=batch_size,
                processing_guarantee=guarantee,
            )
            code = run_worker(settings, config, log_level=log_level)
        except ConvsyncError as e:
            console.print(f"[red]streams failed:[/] {e}")
            raise typer.Exit(1) from e
        raise typer.Exit(code)
