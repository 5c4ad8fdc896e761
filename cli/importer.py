"""`convsync import FILE.jsonl`: historical messages of another inbox onto the events topic."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add this component's commands to ``app``."""
    app.command("import")(import_messages)


def import_messages(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, readable=True, help="JSON Lines file."),
    ],
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Only read the file and list its bad lines (up to 100); send nothing."
        ),
    ] = False,
) -> None:
    """Load historical messages (docs/migration.md) as events with source = import.

    Each line is one message; a message the webhook or the crawler also brings is the
    same event (same id by its mid). At a bad line the import stops, after everything
    before it is durable in Kafka: fix the line and run the same file again.
    """
    from cli.common import console, load_settings
    from convsync.errors import ConvsyncError
    from producers.importer import Importer, ImportLineError, Progress, check_file

    if check:
        lines, bad = check_file(file)
        for e in bad:
            console.print(f"[red]{file}: {e}[/]")
        if bad:
            more = " (the listing stops at 100)" if len(bad) >= 100 else ""
            console.print(f"{len(bad)} bad line(s) of {lines}{more}")
            raise typer.Exit(1)
        console.print(f"{file}: {lines} lines, all good")
        return

    def said(progress: Progress) -> None:
        console.print(f"  line {progress.lines}: {progress.messages} messages durable")

    settings = load_settings()
    importer = Importer(settings)
    try:
        with file.open("rb") as stream:
            done = importer.run(stream, on_chunk=said)
    except ImportLineError as e:
        p = importer.progress
        console.print(f"[red]{file}: {e}[/]")
        console.print(
            f"lines 1-{p.lines} are imported ({p.messages} messages); nothing after line "
            f"{e.lineno - 1} was sent. Fix line {e.lineno} and run the same command again: "
            "lines already imported are the same events and change nothing."
        )
        raise typer.Exit(1) from e
    except ConvsyncError as e:
        console.print(f"[red]import failed:[/] {e}")
        raise typer.Exit(1) from e
    console.print(
        f"imported {done.messages} messages from {done.lines} lines ({done.blank} blank) "
        f"into {settings.topic('events')}"
    )
