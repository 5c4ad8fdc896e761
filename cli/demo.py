"""`convsync demo`: the whole pipeline on the local stack against a simulated Meta.

It starts the stack, a fake Graph API with simulated pages, the gateway, crawler workers,
the materializer and the streams worker; backfills every page while signed webhooks for
the same pages flow; shows live progress; and ends by comparing Postgres with the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient
from psycopg import sql
from pydantic import SecretStr

from admin.status import Status, collect
from cli.supervisor import STATE_FILE, Supervisor
from convsync.db import connect
from convsync.errors import ConvsyncError
from convsync.kafka import admin_client, ensure_topics, topic_specs
from convsync.settings import Settings
from deploy.ports import free_ports
from deploy.simulator.graph_api import GraphApiServer, GraphWorld, token_for
from deploy.simulator.instagram import ACCOUNT as INSTAGRAM_ACCOUNT
from deploy.simulator.instagram import InstagramTraffic
from deploy.simulator.webhooks import WebhookSender, page_body, post
from schemas.migrate import apply_migrations

log = logging.getLogger(__name__)

DEMO_PREFIX = "convsync-demo"
DEMO_SCHEMA = "convsync_demo"
APP_SECRET = "demo-app-secret"  # noqa: S105 - the simulator's own secret, not a credential
VERIFY_TOKEN = "demo-verify-token"  # noqa: S105
# A fresh one every run: the admin port is on 127.0.0.1, but a guessable token is refused.
ADMIN_TOKEN = secrets.token_urlsafe(32)

TruthRow = tuple[str, str, str, str | None, str | None]  # page, psid, mid, text, direction


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """How big the simulated world is and how hard the webhooks push."""

    pages: int = 3
    conversations: int = 2000
    max_messages: int = 6
    webhook_bodies: int = 600
    webhook_rate: float = 150.0
    crawler_workers: int = 2
    calls_per_second: float = 200.0
    seed: int = 7
    timeout: float = 900.0


@dataclass
class WebhookTally:
    """What the fake Meta sent and what the gateway answered."""

    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    truth: set[TruthRow] = field(default_factory=set)
    read_watermarks: dict[tuple[str, str], int] = field(default_factory=dict)
    instagram_messages: int = 0
    done: bool = False
    error: str | None = None


class GraphThread:
    """The fake Graph API served from a background thread with its own event loop."""

    def __init__(self, world: GraphWorld) -> None:
        self.server = GraphApiServer(world)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.url = ""

    def start(self) -> str:
        self.thread.start()
        fut = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop)
        self.url = fut.result(timeout=30)
        return self.url

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


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


def send_webhooks(url: str, world: GraphWorld, opts: DemoOptions, tally: WebhookTally) -> None:
    """Post signed webhook bodies for the simulated pages at about ``webhook_rate``/s.

    Mixes new messages from known and new users, page echoes, re-deliveries of messages
    the crawler also sees (same mids), Meta-style retries of whole bodies, and reads;
    every fifth body is one Instagram account's (messages, story replies, echoes,
    unsends, reactions, messaging_seen). Every body is retried until the gateway answers
    200, like Meta does.
    """
    sender = WebhookSender(APP_SECRET, seed=opts.seed)
    instagram = InstagramTraffic(sender)
    rng = sender.rng
    pages = world.page_ids
    known = {p: [c for c in world.conversations[p] if c.psid] for p in pages}
    new_users = {p: [sender.psid() for _ in range(20)] for p in pages}
    interval = 1.0 / opts.webhook_rate
    last_body = None
    try:
        for n in range(opts.webhook_bodies):
            if n % 5 == 4:
                ig = instagram.body(n)
                tally.truth.update(ig.messages)
                tally.instagram_messages += len(ig.messages)
                for key, mark in ig.reads.items():
                    tally.read_watermarks[key] = max(tally.read_watermarks.get(key, 0), mark)
                _post_until_ok(url, ig.signed, tally)
                time.sleep(interval)
                continue
            page = pages[n % len(pages)]
            items: list[dict[str, Any]] = []
            roll = rng.random()
            if roll < 0.35:  # a new message from a known user
                conv = rng.choice(known[page])
                assert conv.psid is not None
                text = f"webhook {n}"
                item = sender.message(page, conv.psid, text=text)
                tally.truth.add((page, conv.psid, item["message"]["mid"], text, "inbound"))
                items.append(item)
            elif roll < 0.55:  # a new user writes
                psid = rng.choice(new_users[page])
                text = f"new user {n}"
                item = sender.message(page, psid, text=text)
                tally.truth.add((page, psid, item["message"]["mid"], text, "inbound"))
                items.append(item)
            elif roll < 0.70:  # the page answers (an echo)
                conv = rng.choice(known[page])
                assert conv.psid is not None
                item = sender.echo(page, conv.psid, text=f"reply {n}")
                tally.truth.add((page, conv.psid, item["message"]["mid"], f"reply {n}", "outbound"))
                items.append(item)
            elif roll < 0.85:  # a message the crawler also sees: same mid, same fact
                conv = rng.choice(known[page])
                assert conv.psid is not None
                msg = conv.messages[0]
                if msg.text and not msg.malformed:
                    route = (page, conv.psid) if msg.from_page else (conv.psid, page)
                    body: dict[str, Any] = {"mid": msg.mid, "text": msg.text}
                    if msg.from_page:
                        body["is_echo"] = True
                    items.append(
                        {
                            "sender": {"id": route[0]},
                            "recipient": {"id": route[1]},
                            "timestamp": msg.created_ms,
                            "message": body,
                        }
                    )
            else:  # the user read the conversation
                conv = rng.choice(known[page])
                assert conv.psid is not None
                item = sender.read(page, conv.psid)
                key = (page, conv.psid)
                mark = int(item["read"]["watermark"])
                tally.read_watermarks[key] = max(tally.read_watermarks.get(key, 0), mark)
                items.append(item)
            if not items:
                continue
            signed = sender.sign(page_body([(page, items, [])], time=sender.now()))
            if last_body is not None and rng.random() < 0.1:
                _post_until_ok(url, last_body, tally)  # Meta re-delivers a body it sent
            _post_until_ok(url, signed, tally)
            last_body = signed
            time.sleep(interval)
    except Exception as e:  # noqa: BLE001 - the demo reports the failure in its summary
        tally.error = f"{type(e).__name__}: {e}"
    finally:
        tally.done = True


def _post_until_ok(url: str, signed: Any, tally: WebhookTally) -> None:
    for attempt in range(50):
        try:
            status = post(url, signed, timeout=10)
        except OSError:
            status = 0
        tally.sent += 1
        tally.statuses[status] += 1
        if status == 200:
            return
        time.sleep(min(5.0, 0.2 * 2**attempt))
    raise ConvsyncError("the gateway did not accept a webhook body after 50 tries")


@dataclass(frozen=True, slots=True)
class Comparison:
    """Postgres against the truth."""

    expected_messages: int
    stored_messages: int
    missing: int
    unexpected: int
    duplicates: int
    conversations_expected: int
    conversations_stored: int
    conversation_set_mismatches: int
    count_mismatches: int
    watermark_mismatches: int
    # Conversations whose platform is not their page's or account's.
    platform_mismatches: int = 0
    instagram_conversations: int = 0

    @property
    def ok(self) -> bool:
        return (
            self.missing == 0
            and self.unexpected == 0
            and self.duplicates == 0
            and self.conversations_expected == self.conversations_stored
            and self.count_mismatches == 0
            and self.watermark_mismatches == 0
            and self.platform_mismatches == 0
        )


def compare(
    settings: Settings, truth: set[TruthRow], read_watermarks: dict[tuple[str, str], int]
) -> Comparison:
    """Compare the demo schema with the truth (messages, conversations, watermarks)."""
    schema = sql.Identifier(settings.db_schema)
    with connect(settings) as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT page_id, psid, mid, text, direction FROM {}.events WHERE kind = 'message'"
            ).format(schema)
        ).fetchall()
        dup_row = conn.execute(
            sql.SQL(
                "SELECT count(*) - count(DISTINCT (page_id, mid)) FROM {}.events"
                " WHERE kind = 'message'"
            ).format(schema)
        ).fetchone()
        convs = conn.execute(
            sql.SQL(
                "SELECT page_id, psid, message_count,"
                " (extract(epoch FROM read_watermark) * 1000)::bigint, platform"
                " FROM {}.conversations"
            ).format(schema)
        ).fetchall()
    stored = {
        (str(a), str(b), str(c), None if d is None else str(d), None if e is None else str(e))
        for a, b, c, d, e in rows
    }
    expected_counts = Counter((p, u) for p, u, _, _, _ in truth)
    conv_map = {(str(p), str(u)): (int(str(n)), w) for p, u, n, w, _ in convs}
    platform_of = {
        str(p): "instagram" if str(p) == INSTAGRAM_ACCOUNT else "messenger" for p, *_ in convs
    }
    platform_mismatches = sum(1 for p, *_, f in convs if f != platform_of[str(p)])
    instagram_conversations = sum(1 for p, *_ in convs if str(p) == INSTAGRAM_ACCOUNT)
    count_mismatches = sum(
        1 for k, n in expected_counts.items() if conv_map.get(k, (None,))[0] != n
    )
    watermark_mismatches = sum(
        1
        for k, w in read_watermarks.items()
        if conv_map.get(k) is None or conv_map[k][1] is None or int(str(conv_map[k][1])) != w
    )
    return Comparison(
        expected_messages=len(truth),
        stored_messages=len(rows),
        missing=len(truth - stored),
        unexpected=len(stored - truth),
        duplicates=int(str(dup_row[0])) if dup_row else 0,
        conversations_expected=len(expected_counts),
        conversations_stored=len(conv_map),
        conversation_set_mismatches=len(set(conv_map) ^ set(expected_counts)),
        count_mismatches=count_mismatches,
        watermark_mismatches=watermark_mismatches,
        platform_mismatches=platform_mismatches,
        instagram_conversations=instagram_conversations,
    )


@contextlib.contextmanager
def running(opts: DemoOptions, base: Settings, state_dir: Path) -> Iterator[dict[str, Any]]:
    """Start the fake Meta and every component; stop them all on exit."""
    world = GraphWorld.generate(
        seed=opts.seed,
        pages=opts.pages,
        conversations=opts.conversations,
        max_messages=opts.max_messages,
    )
    graph = GraphThread(world)
    graph_url = graph.start()
    gateway_port = free_ports()
    admin_port = free_ports()
    tokens = {p: token_for(p) for p in world.page_ids}
    # Secrets go through the environment, never the command line.
    env = {
        "CONVSYNC_KAFKA_BOOTSTRAP": base.kafka_bootstrap,
        "CONVSYNC_KAFKA_EXTRA": json.dumps(base.kafka_extra_values()),
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
    }
    logs = state_dir / "demo-logs"
    sup = Supervisor(env, logs, fresh_logs=True, state_file=logs / STATE_FILE)
    try:
        sup.start(
            "gateway",
            "gateway",
            *("--host", "127.0.0.1", "--port", str(gateway_port)),
            *("--admin-host", "127.0.0.1", "--admin-port", str(admin_port)),
        )
        for i in range(opts.crawler_workers):
            sup.start(f"crawler-{i + 1}", "crawler")
        sup.start("materializer", "materialize")
        sup.start(
            "streams",
            "streams",
            "--web-port",
            str(free_ports()),
            "--data-dir",
            str(state_dir / "demo-streams"),
        )
        yield {
            "world": world,
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


def _table(
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
        truth: set[TruthRow] = set()
        for p in pages:
            truth |= {tuple(r) for r in world.expected(p)["messages"]}
            submit(settings, new_request(p, full=True))
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
                live.update(_table(snap, pages, tally, sup, started))
                settled = (
                    tally.done
                    and crawl_done(snap, pages)
                    and snap.errors == []
                    and snap.lags
                    and sum(snap.lag_by_group().values()) == 0
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
        truth |= tally.truth
        result = compare(settings, truth, tally.read_watermarks)
        _summary(console, snap, result, tally, time.monotonic() - started, ctx)
        if stay:
            console.print("still running for the dashboard; Ctrl-C stops everything")
            while True:
                sup.watch()
                time.sleep(1)
    return result


def _summary(
    console: Any,
    snap: Status,
    result: Comparison,
    tally: WebhookTally,
    seconds: float,
    ctx: dict[str, Any],
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
        "Instagram messages sent / conversations stored",
        f"{tally.instagram_messages} / {result.instagram_conversations}",
    )
    t.add_row("platform mismatches", str(result.platform_mismatches))
    t.add_row("DLQ records", str(snap.dlq_records))
    t.add_row("Postgres vs the fake's truth", "[green]MATCH[/]" if result.ok else "[red]DIFFERS[/]")
    console.print(t)
    console.print(f"gateway: {ctx['gateway']}/webhook  (metrics at {ctx['admin']}/metrics)")
    console.print(f"dashboard: {ctx['admin']}/dashboard  (admin token: {ADMIN_TOKEN})")
    console.print(f"Postgres: schema {DEMO_SCHEMA}; component logs in {ctx['supervisor'].log_dir}")
