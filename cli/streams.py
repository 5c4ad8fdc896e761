"""`convsync streams`: the faust conversation change stream."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add this component's commands to ``app``."""

    @app.command()
    def streams(
        web_port: Annotated[int, typer.Option(help="Port of the stats/metrics web view.")] = 6066,
        web_host: Annotated[str, typer.Option(help="Listen address of the web view.")] = (
            "127.0.0.1"
        ),
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
        from convsync.errors import ConvsyncError
        from streams.app import StreamConfig
        from streams.worker import run_worker

        try:
            settings = load_settings()
            config = StreamConfig(
                web_port=web_port,
                web_host=web_host,
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
