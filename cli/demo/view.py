"""What the demo shows: the live progress tables and the summary."""

from __future__ import annotations

import time
from typing import Any

from admin.status import Status
from cli.demo.compare import Comparison
from cli.demo.gap import Gap
from cli.demo.options import ADMIN_TOKEN, DEMO_PREFIX, DEMO_SCHEMA, WebhookTally
from cli.demo.reconnect import Reconnect
from cli.supervisor import Supervisor


def progress(
    snap: Status, pages: list[str], tally: WebhookTally, sup: Supervisor, started: float
) -> Any:
    from rich.console import Group
    from rich.table import Table

    crawls = {str(c.get("page_id")): c for c in snap.crawls}
    pt = Table(title=f"convsync demo — {time.monotonic() - started:.0f}s")
    for col in ("page", "crawl", "conversations", "messages", "api calls", "throttled"):
        pt.add_column(col)
    for p in pages:
        c = crawls.get(p, {})
        pt.add_row(
            p,
            str(c.get("status", "-")),
            str(c.get("conversations_fetched", 0)),
            str(c.get("messages_fetched", 0)),
            str(c.get("api_calls", 0)),
            str(c.get("throttle_waits", 0)),
        )
    ct = Table(title="components")
    for col in ("component", "pid", "state", "restarts"):
        ct.add_column(col)
    for comp in sup.components:
        state = comp.state(sup.stopping)
        ct.add_row(
            comp.name,
            str(comp.pid),
            state if state == "running" else f"[red]{state}[/]",
            str(comp.restarts),
        )
    events_hw = sum(snap.high_watermarks.get(f"{DEMO_PREFIX}.events", {}).values())
    conv_hw = sum(snap.high_watermarks.get(f"{DEMO_PREFIX}.conversations", {}).values())
    ft = Table(title="flow")
    for col in (
        "webhook POSTs",
        "answers",
        "events in Kafka",
        "event rows",
        "conversation rows",
        "materializer lag",
        "change records",
        "DLQ",
    ):
        ft.add_column(col)
    answers = " ".join(f"{k}:{v}" for k, v in sorted(tally.statuses.items()))
    ft.add_row(
        str(tally.sent),
        answers or "-",
        str(events_hw),
        str(snap.events_rows),
        str(snap.conversations_rows),
        str(sum(snap.lag_by_group().values())),
        str(conv_hw),
        str(snap.dlq_records),
    )
    return Group(pt, ct, ft)


def summary(
    console: Any,
    snap: Status,
    result: Comparison,
    tally: WebhookTally,
    seconds: float,
    ctx: dict[str, Any],
    gap: Gap | None = None,
    back: Reconnect | None = None,
) -> None:
    from rich.table import Table

    t = Table(title=f"summary after {seconds:.1f}s")
    t.add_column("what")
    t.add_column("value")
    t.add_row(
        "events produced to Kafka",
        str(sum(snap.high_watermarks.get(f"{DEMO_PREFIX}.events", {}).values())),
    )
    t.add_row("webhook POSTs (incl. Meta-style re-deliveries)", str(tally.sent))
    t.add_row("event rows in Postgres", str(snap.events_rows))
    t.add_row("message rows / expected", f"{result.stored_messages} / {result.expected_messages}")
    t.add_row(
        "conversations / expected",
        f"{result.conversations_stored} / {result.conversations_expected}",
    )
    t.add_row("materializer lag", str(sum(snap.lag_by_group().values())))
    t.add_row("duplicates", str(result.duplicates))
    t.add_row("missing / unexpected messages", f"{result.missing} / {result.unexpected}")
    t.add_row("message-count mismatches", str(result.count_mismatches))
    t.add_row("read-watermark mismatches", str(result.watermark_mismatches))
    t.add_row(
        "Instagram messages sent / crawled / conversations stored",
        f"{tally.instagram_messages} / {result.instagram_crawled}"
        f" / {result.instagram_conversations}",
    )
    t.add_row("platform mismatches", str(result.platform_mismatches))
    t.add_row(
        "chat-plugin guests (user_ref, no PSID): conversations sent / stored",
        f"{len(tally.guests)} / {result.guest_conversations}",
    )
    if gap is not None and gap.missed:
        t.add_row(
            "webhooks Meta never delivered / filled by reconciliation",
            f"{len(gap.missed)} / {gap.filled} (in {gap.seconds or 0:.1f}s, unasked)",
        )
    if back is not None:
        t.add_row(
            "page token expired, then replaced via the admin API: messages stored",
            f"{back.stored} / {len(back.messages)} (needs_reconnect in {back.refused_after:.1f}s,"
            f" active and crawl done {back.back_after:.1f}s after the PUT)",
        )
    if result.contacts is not None:
        k = result.contacts
        t.add_row(
            "contacts named as Meta names them / users with a PSID",
            f"{k.expected - k.wrong} / {k.expected} ({k.unexpected} unexpected rows)",
        )
    t.add_row("DLQ records", str(snap.dlq_records))
    if result.media is not None:
        m = result.media
        t.add_row(
            "attachments stored / failed / expected", f"{m.stored} / {m.failed} / {m.expected}"
        )
        t.add_row(
            "attachments missing / unexpected / wrong / bad files",
            f"{m.missing} / {m.unexpected} / {m.wrong} / {m.bad_files}",
        )
    t.add_row("Postgres vs the fake's truth", "[green]MATCH[/]" if result.ok else "[red]DIFFERS[/]")
    console.print(t)
    console.print(f"gateway: {ctx['gateway']}/webhook  (metrics at {ctx['admin']}/metrics)")
    console.print(f"dashboard: {ctx['admin']}/dashboard  (admin token: {ADMIN_TOKEN})")
    console.print(f"Postgres: schema {DEMO_SCHEMA}; component logs in {ctx['supervisor'].log_dir}")
