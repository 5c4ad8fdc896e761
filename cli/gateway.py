"""`convsync gateway`: the webhook gateway."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add this component's commands to ``app``."""

    @app.command()
    def gateway(
        host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
        port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
        workers: Annotated[
            int | None, typer.Option(min=1, help="Processes sharing the port (SO_REUSEPORT).")
        ] = None,
        log_level: Annotated[
            str, typer.Option(help="Log level of the workers.", envvar="CONVSYNC_LOG_LEVEL")
        ] = "INFO",
    ) -> None:
        """Serve Meta's Messenger webhooks; 200 only once Kafka holds every event."""
        from pydantic import ValidationError

        from cli.common import console, load_settings
        from convsync.errors import ConvsyncError
        from producers.webhook.server import serve_workers
        from producers.webhook.settings import GatewaySettings

        overrides = {"host": host, "port": port, "workers": workers}
        try:
            settings = load_settings()
            gw = GatewaySettings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
        except ValidationError as e:
            console.print(f"[red]gateway settings invalid:[/] {e}")
            raise typer.Exit(2) from e
        try:
            code = serve_workers(settings, gw, log_level=log_level)
        except ConvsyncError as e:
            console.print(f"[red]gateway failed:[/] {e}")
            raise typer.Exit(1) from e
        raise typer.Exit(code)
