"""`convsync crawl` and `convsync crawler`: the Graph API backfill."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from convsync.settings import Settings


def register(app: typer.Typer) -> None:
    """Add this component's commands to ``app``."""
    app.command()(crawl)
    app.command()(crawler)


def crawl(
    page_id: Annotated[
        str, typer.Argument(help="The Page id (with --via-page: the Instagram account id).")
    ],
    via_page: Annotated[
        str | None,
        typer.Option(
            "--via-page",
            help="Crawl PAGE_ID as an Instagram account, through this linked Facebook Page.",
        ),
    ] = None,
    full: Annotated[bool, typer.Option("--full", help="Re-read everything.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Show progress until done.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Give up waiting after s.")] = None,
) -> None:
    """Request a backfill crawl of PAGE_ID (run `convsync crawler` to do it).

    An Instagram account is crawled through its linked page: `convsync crawl ACCOUNT_ID
    --via-page PAGE_ID` (the page's token in CONVSYNC_PAGE_TOKENS).
    """
    from rich.console import Console

    from cli.common import load_settings
    from convsync.errors import ConvsyncError
    from producers.crawler.request import new_request, submit

    console = Console(stderr=True)
    settings = load_settings()
    try:
        record = new_request(page_id, full=full, via_page=via_page)
    except ValueError as e:
        console.print(f"[red]crawl request refused:[/] {e}")
        raise typer.Exit(2) from e
    try:
        submit(settings, record)
    except ConvsyncError as e:
        console.print(f"[red]crawl request failed:[/] {e}")
        raise typer.Exit(1) from e
    what = f"Instagram account {page_id} via page {via_page}" if via_page else f"page {page_id}"
    console.print(f"crawl {record.crawl_id} of {what} requested (full={full})")
    if wait:
        _wait(settings, record.crawl_id, timeout, console)


def _wait(settings: Settings, crawl_id: str, timeout: float | None, console: Console) -> None:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from convsync.errors import ConvsyncError
    from producers.crawler.request import CrawlView, follow

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[extra]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        convs = bar.add_task("conversations", total=None, extra="")
        msgs = bar.add_task("messages", total=None, extra="")
        said_join = said_pause = False

        def update(view: CrawlView, joined_from: str | None) -> None:
            nonlocal said_join, said_pause
            if joined_from and not said_join:
                console.print(f"request {joined_from} joined the running crawl {view.crawl_id}")
                said_join = True
            if view.status == "paused" and not said_pause:
                # Once: the crawl waits for a new page token, its cursor kept.
                console.print(
                    f"[yellow]crawl {view.crawl_id} paused:[/] {view.last_error}; it resumes"
                    " once the page has a new token (convsync pages add)",
                    highlight=False,
                )
                said_pause = True
            elif view.status != "paused":
                said_pause = False
            bar.update(
                convs,
                completed=view.conversations_done,
                total=max(view.conversations_listed, view.conversations_done) or None,
                extra=f"calls {view.api_calls}, throttle pauses {view.throttle_waits}",
            )
            bar.update(
                msgs,
                completed=view.messages,
                total=max(view.messages_expected, view.messages) or None,
                extra=f"skipped {view.skipped} [{view.status}]",
            )

        try:
            final = follow(settings, crawl_id, on_update=update, timeout=timeout)
        except ConvsyncError as e:
            console.print(f"[red]{e}[/]")
            raise typer.Exit(1) from e
    if final.status == "failed":
        console.print(f"[red]crawl {final.crawl_id} failed:[/] {final.last_error}")
        raise typer.Exit(1)
    if final.status == "cancelled":
        console.print(f"[red]crawl {final.crawl_id} was cancelled[/]")
        raise typer.Exit(1)
    console.print(
        f"[green]crawl {final.crawl_id} done:[/] {final.conversations_done} conversations, "
        f"{final.messages} messages, {final.api_calls} calls, {final.skipped} skipped"
    )


def crawler(
    metrics_addr: Annotated[
        str | None,
        typer.Option(
            help="host:port of /metrics, /healthz and /status (else"
            " CONVSYNC_CRAWLER_METRICS_ADDR; empty: none)."
        ),
    ] = None,
) -> None:
    """Run crawler workers (a consumer group on <prefix>.crawl) until interrupted; they
    also request the periodic reconciliation crawls (CONVSYNC_RECONCILE_EVERY)."""
    from cli.common import load_settings
    from producers.crawler.config import CrawlerSettings
    from producers.crawler.process import run_worker

    run_worker(load_settings(), CrawlerSettings(), metrics_addr=metrics_addr)
