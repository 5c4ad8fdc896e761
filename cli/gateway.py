"""`convsync gateway`: the webhook gateway, with its private admin listener."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add this component's commands to ``app``."""

    @app.command()
    def gateway(
        host: Annotated[str | None, typer.Option(help="Webhook listen address.")] = None,
        port: Annotated[int | None, typer.Option(help="Webhook listen port.")] = None,
        workers: Annotated[
            int | None, typer.Option(min=1, help="Processes sharing the ports (SO_REUSEPORT).")
        ] = None,
        admin_host: Annotated[
            str | None,
            typer.Option(help="Admin API, dashboard and metrics address [default: 127.0.0.1]."),
        ] = None,
        admin_port: Annotated[
            int | None,
            typer.Option(help="Admin API, dashboard and metrics port [default: 8081]."),
        ] = None,
        log_level: Annotated[
            str, typer.Option(help="Log level of the workers.", envvar="CONVSYNC_LOG_LEVEL")
        ] = "INFO",
    ) -> None:
        """Serve Meta's webhooks (200 only once Kafka holds every event) and, on a second,
        private listener, the admin API, the dashboard and the metrics."""
        import logging

        from pydantic import ValidationError

        from admin import AdminSettings
        from admin.auth import check_token
        from cli.common import console, load_settings
        from cli.listeners import private_listener
        from convsync.errors import ConvsyncError
        from producers.webhook.server import serve_workers
        from producers.webhook.settings import GatewaySettings

        overrides = {"host": host, "port": port, "workers": workers}
        admin_overrides = {"host": admin_host, "port": admin_port}
        try:
            settings = load_settings()
            gw = GatewaySettings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
            admin = AdminSettings(**{k: v for k, v in admin_overrides.items() if v is not None})  # type: ignore[arg-type]
        except ValidationError as e:
            console.print(f"[red]gateway settings invalid:[/] {e}")
            raise typer.Exit(2) from e
        if admin.port and (admin.host, admin.port) == (gw.host, gw.port):
            console.print("[red]gateway settings invalid:[/] the admin port is the webhook port")
            raise typer.Exit(2)
        token = settings.admin_token.get_secret_value()
        try:
            check_token(token)
        except ConvsyncError as e:
            console.print(f"[red]gateway refused to start:[/] {e}")
            raise typer.Exit(2) from e
        log = logging.getLogger("cli.gateway")
        if not token:
            log.warning(
                "admin API disabled: CONVSYNC_ADMIN_TOKEN is empty; %s:%d serves /metrics only",
                admin.host,
                admin.port,
            )
        else:
            log.info("admin API and dashboard on http://%s:%d/admin/", admin.host, admin.port)
        try:
            code = serve_workers(
                settings,
                gw,
                log_level=log_level,
                private=private_listener(settings, admin, gw.deadlines()),
            )
        except ConvsyncError as e:
            console.print(f"[red]gateway failed:[/] {e}")
            raise typer.Exit(1) from e
        raise typer.Exit(code)
