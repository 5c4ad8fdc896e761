"""`convsync status`: lag, crawls, sync statistics, pages needing attention, components."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cli.common import StateDir, load_settings, state_folder


def register(app: typer.Typer) -> None:
    """Add ``status`` to ``app``."""

    @app.command()
    def status(
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
        stall_after: Annotated[
            float,
            typer.Option(help="Seconds without progress that make a consumer or crawl stalled."),
        ] = 300.0,
        rate_window: Annotated[
            float,
            typer.Option(help="Seconds over which the events stored per second are measured."),
        ] = 2.0,
        pages: Annotated[
            int | None,
            typer.Option(
                min=0,
                help="Pages whose crawl and sync statistics are listed (the ones needing a"
                " look first; every page is counted); 0 lists every page.  [default: 50]",
            ),
        ] = None,
        state_dir: StateDir = None,
    ) -> None:
        """Lag per group and partition, crawls, sync statistics, throughput, DLQ, stalls, and
        the components `convsync run` supervises (restarts, last exit)."""
        from admin.status import LISTED_PAGES, collect
        from cli.supervisor import STATE_FILE, read_state

        settings = load_settings()
        snap = collect(
            settings,
            stall_after=stall_after,
            rate_window=rate_window,
            listed_pages=LISTED_PAGES if pages is None else pages or None,
        )
        snap.supervisor = read_state(state_folder(state_dir) / STATE_FILE)
        if as_json:
            sys.stdout.write(json.dumps(snap.as_json(), indent=2, default=str) + "\n")
        else:
            out = Console()
            groups = Table(title="consumer groups (offsets stored in Postgres)")
            for col in ("group", "partitions", "lag"):
                groups.add_column(col)
            parts: dict[str, int] = {}
            for lag in snap.lags:
                parts[lag.group] = parts.get(lag.group, 0) + 1
            for group, total in snap.lag_by_group().items():
                groups.add_row(group, str(parts[group]), str(total))
            out.print(groups)
            total = sum(snap.crawl_counts.values())
            counts = ", ".join(f"{n} {state}" for state, n in snap.crawl_counts.items())
            shown = f"{len(snap.crawls)} of {total} pages, not done first" if total else "none"
            crawls = Table(title=f"crawls ({shown}; {counts or 'no crawl yet'})")
            for col in ("page", "status", "conversations", "messages", "api calls", "last error"):
                crawls.add_column(col)
            for c in snap.crawls:
                crawls.add_row(
                    str(c.get("page_id")),
                    str(c.get("status")),
                    str(c.get("conversations_fetched")),
                    str(c.get("messages_fetched")),
                    str(c.get("api_calls")),
                    str(c.get("last_error") or ""),
                )
            out.print(crawls)
            if snap.sync_statistics:
                t = snap.sync_totals
                stats = Table(
                    title=f"sync statistics ({len(snap.sync_statistics)} of {t.get('pages')}"
                    f" pages, latest failure first; all: {t.get('crawls')} crawls,"
                    f" {t.get('succeeded')} ok, {t.get('failed')} failed,"
                    f" {t.get('messages_fetched')} messages)"
                )
                for col in ("page", "crawls", "ok", "failed", "joined", "messages", "avg s"):
                    stats.add_column(col)
                for st in snap.sync_statistics:
                    avg = st.get("avg_duration_seconds")
                    stats.add_row(
                        str(st.get("page_id")),
                        str(st.get("crawls")),
                        str(st.get("succeeded")),
                        str(st.get("failed")),
                        str(st.get("joined")),
                        str(st.get("messages_fetched")),
                        "-" if avg is None else f"{float(avg):.1f}",
                    )
                out.print(stats)
            if snap.events_per_second is not None:
                out.print(
                    f"throughput: ~{snap.events_per_second:.1f} events/s stored"
                    f" (over {rate_window:g} s, from Postgres's statistics)"
                )
            for stalled in snap.stalled:
                out.print(f"[yellow]stalled:[/] {stalled}")
            for page in snap.pages_attention:
                paused = ", its crawl paused (cursor kept)" if page.get("crawl_paused") else ""
                out.print(
                    f"[yellow]page {page['page_id']} {page['status']}:[/] "
                    f"{page.get('status_message') or ''}{paused}"
                )
            rows, convs = (
                ("~" if k in snap.estimated else "") + str(getattr(snap, k))
                for k in ("events_rows", "conversations_rows")
            )
            out.print(
                f"events rows: {rows}  conversations: {convs}  DLQ records: {snap.dlq_records}"
                + ("  (~: an estimate)" if snap.estimated else "")
            )
            _print_components(out, snap.supervisor)
            for err in snap.errors:
                out.print(f"[red]{err}[/]")
        if snap.errors:
            raise typer.Exit(1)


def _print_components(out: Console, supervisor: dict[str, Any] | None) -> None:
    if supervisor is None:
        return
    running = supervisor.get("supervisor_running")
    title = "components of `convsync run`" + ("" if running else " (supervisor not running)")
    table = Table(title=title)
    for col in ("component", "pid", "state", "restarts", "last exit code"):
        table.add_column(col)
    for c in supervisor.get("components", []):
        state = str(c.get("state")) if running else "-"
        code = c.get("last_exit_code")
        table.add_row(
            str(c.get("name")),
            str(c.get("pid")),
            state,
            str(c.get("restarts")),
            "-" if code is None else str(code),
        )
    out.print(table)
