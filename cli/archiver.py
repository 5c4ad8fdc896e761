"""`convsync archive`: copy attachment bytes off Meta's CDN into CONVSYNC_MEDIA_DIR."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated, Any

import typer


def register(app: typer.Typer) -> None:
    """Add this component's commands to ``app``."""
    app.command()(archive)


def archive(
    media_dir: Annotated[
        Path | None,
        typer.Option(help="Folder of the archived files (default: CONVSYNC_MEDIA_DIR)."),
    ] = None,
    drain: Annotated[
        bool,
        typer.Option(
            "--drain",
            help="Stop once the events topic is read to its end and no attachment is "
            "left to fetch (retries included), instead of running until SIGTERM.",
        ),
    ] = False,
    metrics_addr: Annotated[
        str | None,
        typer.Option(help="host:port of /metrics and /healthz (default 127.0.0.1:9465)."),
    ] = None,
    group: Annotated[
        str, typer.Option(help="Name of its stored offsets in consumer_offsets.")
    ] = "convsync-archiver",
) -> None:
    """Download every attachment of the events topic once, content-addressed."""
    from rich.console import Console

    from cli.common import load_settings
    from consumers.archiver import Archiver, ArchiverSettings
    from convsync.errors import ConvsyncError

    console = Console(stderr=True)
    overrides: dict[str, Any] = {}
    if media_dir is not None:
        overrides["dir"] = media_dir
    if metrics_addr is not None:
        overrides["metrics_addr"] = metrics_addr
    try:
        settings = load_settings()
        media = ArchiverSettings(**overrides)
        archiver = Archiver(settings, media, group=group, drain=drain)
    except ConvsyncError as e:
        console.print(f"[red]archive failed:[/] {e}")
        raise typer.Exit(2) from e

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await archiver.run(stop)

    try:
        asyncio.run(main())
    except ConvsyncError as e:
        console.print(f"[red]archive failed:[/] {e}")
        raise typer.Exit(1) from e
    t = archiver.totals
    console.print(
        f"archiver stopped: {t.downloaded} downloaded ({t.files_new} new files, "
        f"{t.bytes_new} bytes), {t.reused} reused, {t.failed} failed, {t.retried} retries"
    )
