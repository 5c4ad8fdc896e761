"""`convsync demo`: the whole pipeline on the local stack against a simulated Meta.

It starts the stack, a fake Graph API with simulated pages, the gateway, crawler workers,
the materializer and the streams worker (as `convsync run` starts them); backfills every
page while signed webhooks for the same pages flow; shows live progress; and ends by
comparing Postgres with the truth.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient
from psycopg import sql
from pydantic import SecretStr

from admin.status import Status, collect, kafka_group_lag
from cli.demo.compare import Comparison, compare
from cli.demo.contacts import compare_contacts, pending_contacts
from cli.demo.gap import Gap, open_gap, wait_filled
from cli.demo.media import compare_media, media_env, pending_media
from cli.demo.options import (
    ADMIN_TOKEN,
    APP_SECRET,
    DEMO_PREFIX,
    DEMO_SCHEMA,
    VERIFY_TOKEN,
    DemoOptions,
    TruthRow,
    WebhookTally,
)
from cli.demo.reconnect import Reconnect, admin_call, expire_and_reconnect
from cli.demo.traffic import GraphThread, send_webhooks
from cli.demo.view import progress, summary
from cli.supervisor import STATE_FILE, Pipeline, Supervisor, start_pipeline
from convsync.db import connect
from convsync.errors import ConvsyncError
from convsync.kafka import admin_client, ensure_topics, topic_specs
from convsync.settings import Settings
from deploy.ports import free_ports
from deploy.simulator.graph_api import GraphWorld, token_for
from deploy.simulator.graph_instagram import instagram_inbox
from deploy.simulator.instagram import ACCOUNT as INSTAGRAM_ACCOUNT
from schemas.migrate import apply_migrations


def reset(settings: Settings) -> None:
    """Drop the demo's topics and schema, then create them afresh."""
    admin: AdminClient = admin_client(settings)
    names = [s.name for s in topic_specs(settings)]
    existing = set(admin.list_topics(timeout=10).topics)
    doomed = [n for n in names if n in existing]
    doomed += [
        t
        for t in existing
        if t.startswith(f"{settings.topic_prefix}-") or t.startswith(f"_{settings.topic_prefix}")
    ]
    if doomed:
        for fut in admin.delete_topics(doomed, operation_timeout=30).values():
            fut.result(timeout=30)
        deadline = time.monotonic() + 30
        while set(doomed) & set(admin.list_topics(timeout=10).topics):
            if time.monotonic() > deadline:
                raise ConvsyncError(f"topics still present after delete: {doomed}")
            time.sleep(0.3)
    ensure_topics(admin, topic_specs(settings))
    with connect(settings) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(settings.db_schema))
        )
        apply_migrations(conn, schema=settings.db_schema)


@contextlib.contextmanager
def running(opts: DemoOptions, base: Settings, state_dir: Path) -> Iterator[dict[str, Any]]:
    """Start the fake Meta and every component; stop them all on exit."""
    world = GraphWorld.generate(
        seed=opts.seed,
        pages=opts.pages,
        conversations=opts.conversations,
        max_messages=opts.max_messages,
    )
    # The Instagram account whose webhooks the demo sends is linked to the first page:
    # its conversations are crawled through that page too.
    world.link_instagram(
        world.page_ids[0],
        INSTAGRAM_ACCOUNT,
        instagram_inbox(
            seed=opts.seed,
            account_id=INSTAGRAM_ACCOUNT,
            conversations=max(5, opts.conversations // 10),
            max_messages=opts.max_messages,
        ),
    )
    graph = GraphThread(world, media=opts.archive)
    graph_url = graph.start()
    gateway_port = free_ports()
    admin_port = free_ports()
    tokens = {p: token_for(p) for p in world.page_ids}
    # Secrets go through the environment, never the command line.
    env = {
        "CONVSYNC_KAFKA_BOOTSTRAP": base.kafka_bootstrap,
        "CONVSYNC_KAFKA_EXTRA": json.dumps(base.kafka_extra_values()),
        "CONVSYNC_SECRET_KEY": base.secret_key.get_secret_value(),
        "CONVSYNC_DATABASE_URL": base.database_url.get_secret_value(),
        "CONVSYNC_TOPIC_PREFIX": base.topic_prefix,
        "CONVSYNC_DB_SCHEMA": base.db_schema,
        "CONVSYNC_PARTITIONS": str(base.partitions),
        "CONVSYNC_APP_SECRET": APP_SECRET,
        "CONVSYNC_VERIFY_TOKEN": VERIFY_TOKEN,
        "CONVSYNC_ADMIN_TOKEN": ADMIN_TOKEN,
        "CONVSYNC_GRAPH_URL": graph_url,
        "CONVSYNC_PAGE_TOKENS": json.dumps(tokens),
        "CONVSYNC_CRAWL_CALLS_PER_SECOND": str(opts.calls_per_second),
        "CONVSYNC_RECONCILE_EVERY": str(opts.reconcile_every),
        "CONVSYNC_RECONCILE_TICK": "1",
        # A token set through the admin API is read within a second (default 5 s).
        "CONVSYNC_CRAWL_TOKEN_REFRESH": "1",
        # The linked Instagram account is reconciled too, through its page.
        "CONVSYNC_RECONCILE_INSTAGRAM": json.dumps({a: p for p, a in world.linked.items()}),
        # Users seen only through webhooks are named by the User Profile API within the run.
        "CONVSYNC_CONTACT_TICK": "1",
        "CONVSYNC_CONTACT_CALLS_PER_SECOND": "20",
    }
    if opts.archive:
        media_dir = state_dir / "demo-media"
        shutil.rmtree(media_dir, ignore_errors=True)
        env |= media_env(media_dir, str(world.media_base))
    logs = state_dir / "demo-logs"
    sup = Supervisor(env, logs, fresh_logs=True, state_file=logs / STATE_FILE)
    try:
        start_pipeline(
            sup,
            Pipeline(
                gateway=("127.0.0.1", gateway_port),
                admin=("127.0.0.1", admin_port),
                crawler_workers=opts.crawler_workers,
                archiver=opts.archive,
                streams_args=(
                    *("--web-port", str(free_ports())),
                    *("--data-dir", str(state_dir / "demo-streams")),
                ),
            ),
        )
        yield {
            "world": world,
            "graph": graph,
            "supervisor": sup,
            "graph_url": graph_url,
            "gateway": f"http://127.0.0.1:{gateway_port}",
            "admin": f"http://127.0.0.1:{admin_port}",
            "env": env,
        }
    finally:
        sup.stop()
        graph.stop()


def wait_ready(url: str, *, timeout: float = 60.0) -> None:
    """Wait until the gateway's /readyz answers 200. Raises ConvsyncError."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:  # noqa: S310 - our URL
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise ConvsyncError(f"the gateway at {url} did not become ready in {timeout:.0f}s")


def demo_settings(base: Settings) -> Settings:
    """Return ``base`` pointed at the demo's own topics and schema."""
    return base.model_copy(
        update={
            "topic_prefix": DEMO_PREFIX,
            "db_schema": DEMO_SCHEMA,
            "app_secret": SecretStr(APP_SECRET),
        }
    )


def crawl_done(snap: Status, pages: list[str]) -> bool:
    """Return True when every page's crawl finished (done or failed)."""
    states = {str(c.get("page_id")): str(c.get("status")) for c in snap.crawls}
    return all(states.get(p) in ("done", "failed") for p in pages)


def fill_gap(
    console: Any, settings: Settings, opts: DemoOptions, tally: WebhookTally, ctx: dict[str, Any]
) -> Gap:
    """Open the gap of :mod:`cli.demo.gap` and wait for reconciliation to fill it and for
    the materializer to catch up. Raises :class:`ConvsyncError` when it does not."""
    gap = open_gap(f"{ctx['gateway']}/webhook", ctx["graph"], opts, tally)
    if not gap.missed:
        return gap
    console.print(
        f"\nMeta never delivered {len(gap.missed)} of {gap.messages} new messages' webhooks;"
        f" no crawl is asked for: reconciliation runs every {opts.reconcile_every:.0f}s"
    )
    timeout = 3 * opts.reconcile_every + 60
    if not wait_filled(settings, gap, timeout):
        raise ConvsyncError(
            f"reconciliation stored {gap.filled} of {len(gap.missed)} missed messages"
            f" in {timeout:.0f}s"
        )
    deadline = time.monotonic() + 60
    while sum(collect(settings).lag_by_group().values()) != 0:
        if time.monotonic() > deadline:
            raise ConvsyncError("the materializer did not catch up after reconciliation")
        time.sleep(0.5)
    return gap


def reconnect(
    console: Any, settings: Settings, opts: DemoOptions, tally: WebhookTally, ctx: dict[str, Any]
) -> Reconnect | None:
    """Expire a page's token, rotate it through the admin API, wait for the paused crawl
    to finish (:mod:`cli.demo.reconnect`) and for the materializer to catch up."""
    if opts.reconnect_messages <= 0:
        return None
    console.print(
        "\nthe token of a page expires at Meta; a sync is asked for through the admin API"
    )
    back = expire_and_reconnect(settings, ctx["graph"], ctx["admin"], opts, tally)
    console.print(
        f"page {back.page} went to needs_reconnect in {back.refused_after:.1f}s"
        f" ({back.told!r}); a new token through PUT /admin/pages/{back.page}:"
        f" active again and its paused crawl done in {back.back_after:.1f}s"
    )
    deadline = time.monotonic() + opts.timeout
    while sum(collect(settings).lag_by_group().values()) != 0:
        if time.monotonic() > deadline:
            raise ConvsyncError("the materializer did not catch up after the reconnect")
        time.sleep(0.5)
    return back


def run_demo(
    opts: DemoOptions, *, base: Settings, state_dir: Path, stay: bool = False
) -> Comparison:
    """Run the demo end to end; return the comparison with the truth.

    With ``stay``, everything keeps running after the summary (the dashboard stays
    live) until Ctrl-C.

    A component that exits is restarted by the supervisor (the table shows how often).
    Raises :class:`ConvsyncError` when the run times out.
    """
    from rich.console import Console
    from rich.live import Live

    from producers.crawler.request import new_request, submit

    console = Console()
    settings = demo_settings(base)
    console.print(f"resetting demo topics ({DEMO_PREFIX}.*) and schema {DEMO_SCHEMA}")
    reset(settings)
    started = time.monotonic()
    with running(opts, settings, state_dir) as ctx:
        world: GraphWorld = ctx["world"]
        sup: Supervisor = ctx["supervisor"]
        wait_ready(ctx["gateway"])
        pages = world.page_ids
        # The Instagram account is added as an operator would, with its linked page's
        # token: the profile fetcher then names its users too.
        for p, account in world.linked.items():
            admin_call(
                ctx["admin"],
                "PUT",
                f"/pages/{account}",
                {"access_token": token_for(p), "platform": "instagram", "name": "demo account"},
            )
        truth: set[TruthRow] = set()
        for p in pages:
            truth |= {tuple(r) for r in world.expected(p)["messages"]}
            submit(settings, new_request(p, full=True))
        for p, account in world.linked.items():
            truth |= {tuple(r) for r in world.expected(account)["messages"]}
            submit(settings, new_request(account, full=True, via_page=p))
        # What is crawled: the pages and the Instagram accounts (through their pages).
        crawled = [*pages, *world.linked.values()]
        tally = WebhookTally()
        sender = threading.Thread(
            target=send_webhooks,
            args=(f"{ctx['gateway']}/webhook", world, opts, tally),
            daemon=True,
        )
        sender.start()
        deadline = time.monotonic() + opts.timeout
        with Live(console=console, refresh_per_second=2) as live:
            while True:
                snap = collect(settings)
                sup.watch()
                live.update(progress(snap, crawled, tally, sup, started))
                settled = (
                    tally.done
                    and crawl_done(snap, crawled)
                    and snap.errors == []
                    and snap.lags
                    and sum(snap.lag_by_group().values()) == 0
                    # Every delivery mapped too (before that, events may be missing).
                    and kafka_group_lag(settings, "deliveries", "convsync-mapper") == 0
                    and (not opts.archive or pending_media(settings) == 0)
                    and pending_contacts(settings) == 0
                )
                if settled:
                    break
                if time.monotonic() > deadline:
                    restarted = ", ".join(
                        f"{c.name} {c.restarts}x" for c in sup.components if c.restarts
                    )
                    raise ConvsyncError(
                        f"the demo did not settle in {opts.timeout:.0f}s"
                        + (f" (restarted: {restarted}; logs in {sup.log_dir})" if restarted else "")
                    )
                time.sleep(0.5)
        if tally.error:
            raise ConvsyncError(f"webhook sender failed: {tally.error}")
        gap = fill_gap(console, settings, opts, tally, ctx)
        back = reconnect(console, settings, opts, tally, ctx)
        snap = collect(settings)
        truth |= tally.truth
        result = compare(settings, truth, tally.read_watermarks, tally.guests)
        users = {(p, u) for p, u, *_ in truth}
        contacts = compare_contacts(settings, users, set(world.linked.values()))
        result = replace(result, contacts=contacts)
        if opts.archive:
            media = compare_media(settings, world, state_dir / "demo-media")
            result = replace(result, media=media)
        summary(console, snap, result, tally, time.monotonic() - started, ctx, gap, back)
        if stay:
            console.print("still running for the dashboard; Ctrl-C stops everything")
            while True:
                sup.watch()
                time.sleep(1)
    return result
