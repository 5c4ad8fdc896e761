"""End-to-end harness of the fault suite: components, fake Meta, webhook load, truth, results."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import secrets
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from confluent_kafka import Message, TopicPartition
from psycopg import sql
from pydantic import SecretStr

from admin.status import watermarks
from cli.demo import Comparison, GraphThread, TruthRow, compare, wait_ready
from cli.supervisor import Component, Supervisor
from convsync.db import connect
from convsync.errors import ConvsyncError
from convsync.kafka import make_consumer
from convsync.settings import Settings
from deploy.ports import free_ports
from deploy.simulator.graph_api import GraphWorld, token_for
from deploy.simulator.webhooks import SignedBody, WebhookSender, page_body
from producers.webhook.mapper import STUCK_EXIT
from tests.fault.settle import mapper_group, mapper_lag, unread_events

REPO = Path(__file__).resolve().parents[2]
SECRET = "fault-app-secret-7c1e94b2d0"
VERIFY_TOKEN = "fault-verify-token-3a9f"
ADMIN_TOKEN = secrets.token_urlsafe(32)


# Every secret any scenario of this session handed to a component: no log may hold one.
SECRETS_SEEN: set[str] = {SECRET, VERIFY_TOKEN, ADMIN_TOKEN}


# --- truth ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Body:
    """One signed webhook POST and the facts it carries."""

    signed: SignedBody
    items: int
    messages: tuple[TruthRow, ...]
    reads: tuple[tuple[str, str, int], ...]


@dataclass
class Truth:
    """What Postgres must end up holding."""

    messages: set[TruthRow] = field(default_factory=set)
    reads: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, body: Body) -> None:
        self.messages.update(body.messages)
        for page, psid, mark in body.reads:
            self.reads[(page, psid)] = max(self.reads.get((page, psid), 0), mark)


def make_bodies(
    sender: WebhookSender,
    pages: Sequence[str],
    n: int,
    *,
    known: dict[str, list[str]] | None = None,
    users_per_page: int = 200,
) -> list[Body]:
    """Return ``n`` signed bodies of 1-3 items: user messages, page echoes and reads.

    Reads only go to conversations that already got a message in an earlier body, so
    every conversation of the truth has messages. ``known`` psids (e.g. the crawled
    pages' users) are mixed with fresh ones.
    """
    rng = sender.rng
    users = {
        p: list((known or {}).get(p, [])) + [sender.psid() for _ in range(users_per_page)]
        for p in pages
    }
    talked: dict[str, list[str]] = {p: [] for p in pages}
    out: list[Body] = []
    for i in range(n):
        page = pages[i % len(pages)]
        items: list[dict[str, Any]] = []
        msgs: list[TruthRow] = []
        reads: list[tuple[str, str, int]] = []
        for _ in range(rng.choice((1, 1, 2, 3))):
            psid = rng.choice(users[page])
            roll = rng.random()
            if roll < 0.15 and talked[page]:
                psid = rng.choice(talked[page])
                item = sender.read(page, psid)
                reads.append((page, psid, int(item["read"]["watermark"])))
            elif roll < 0.35:
                text = f"reply {i}"
                item = sender.echo(page, psid, text=text)
                msgs.append((page, psid, item["message"]["mid"], text, "outbound"))
            else:
                text = f"hello {i} ✓"
                item = sender.message(page, psid, text=text)
                msgs.append((page, psid, item["message"]["mid"], text, "inbound"))
            items.append(item)
        for page_, psid, *_ in msgs:
            talked[page_].append(psid)
        signed = sender.sign(page_body([(page, items, [])], time=sender.now()))
        out.append(Body(signed, len(items), tuple(msgs), tuple(reads)))
    return out


# --- load -------------------------------------------------------------------------------
@dataclass
class Load:
    """Posts bodies at ``rate``/s; each is retried like Meta until answered 200."""

    url: str
    bodies: Sequence[Body]
    rate: float
    concurrency: int = 64
    give_up_after: float = 180.0
    posts: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    first_answers: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # of every POST, in seconds
    accepted: list[Body] = field(default_factory=list)
    retried_to_200: int = 0
    gave_up: int = 0
    started: float = 0.0
    finished: float = 0.0
    error: str | None = None
    thread: threading.Thread | None = None

    def start(self) -> None:
        """Run the load in a background thread with its own event loop."""
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def run_blocking(self, timeout: float) -> None:
        """Start and join."""
        self.start()
        self.join(timeout)

    def join(self, timeout: float) -> None:
        assert self.thread is not None
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError(f"the load did not finish in {timeout:.0f}s")
        if self.error:
            raise AssertionError(f"the load failed: {self.error}")

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except Exception as e:  # noqa: BLE001 - reported by join()
            self.error = f"{type(e).__name__}: {e}"

    async def _run(self) -> None:
        self.started = time.monotonic()
        sem = asyncio.Semaphore(self.concurrency)
        timeout = aiohttp.ClientTimeout(total=15)
        conn = aiohttp.TCPConnector(limit=self.concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=conn) as session:
            tasks = []
            for i, body in enumerate(self.bodies):
                delay = self.started + i / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await sem.acquire()
                tasks.append(asyncio.create_task(self._deliver(session, body, sem)))
            await asyncio.gather(*tasks)
        self.finished = time.monotonic()

    async def _deliver(
        self, session: aiohttp.ClientSession, body: Body, sem: asyncio.Semaphore
    ) -> None:
        try:
            deadline = time.monotonic() + self.give_up_after
            attempt = 0
            while True:
                began = time.monotonic()
                status = await post_once(session, self.url, body.signed)
                self.latencies.append(time.monotonic() - began)
                self.posts += 1
                self.statuses[status] += 1
                if attempt == 0:
                    self.first_answers[status] += 1
                if status == 200:
                    self.accepted.append(body)
                    if attempt:
                        self.retried_to_200 += 1
                    return
                if time.monotonic() > deadline:
                    self.gave_up += 1
                    return
                await asyncio.sleep(min(3.0, 0.1 * 2**attempt))
                attempt += 1
        finally:
            sem.release()


async def post_once(session: aiohttp.ClientSession, url: str, signed: SignedBody) -> int:
    """POST once; a connection failure is status 0."""
    try:
        async with session.post(url, data=signed.raw, headers=signed.headers) as resp:
            await resp.read()
            return resp.status
    except (TimeoutError, aiohttp.ClientError, OSError):
        return 0


# --- processes --------------------------------------------------------------------------
def rss_kb(pid: int) -> int:
    """Return the resident set of ``pid`` and all its descendants, in kB (0 if gone)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


class Pipeline:
    """The convsync components of one scenario, each a child process with its own log."""

    def __init__(
        self,
        settings: Settings,
        log_dir: Path,
        *,
        world: GraphWorld | None = None,
        group: str | None = None,
        extra_env: dict[str, str] | None = None,
        env_for: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.world = world
        self.group = group or f"{settings.topic_prefix}-materializer"
        self.graph = GraphThread(world) if world is not None else None
        self.gateway_port = free_ports()
        self.admin_port = free_ports()
        self.streams_port = free_ports()
        self.extra_env = extra_env or {}
        self.env_for = env_for or {}
        self.sups: dict[str, Supervisor] = {}
        self._halt = threading.Event()
        self._reviver: threading.Thread | None = None
        self.comps: dict[str, Component] = {}
        self.restarts: Counter[str] = Counter()
        self.database_url = settings.database_url.get_secret_value()
        self.kafka_bootstrap = settings.kafka_bootstrap
        SECRETS_SEEN.update(self.secrets())

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def admin_url(self) -> str:
        """The gateway's private listener: admin API, dashboard, metrics."""
        return f"http://127.0.0.1:{self.admin_port}"

    def page_tokens(self) -> dict[str, str]:
        return {p: token_for(p) for p in (self.world.page_ids if self.world else [])}

    def secrets(self) -> list[str]:
        """Every secret that must never appear in a log."""
        return [SECRET, VERIFY_TOKEN, ADMIN_TOKEN, *self.page_tokens().values()]

    def __enter__(self) -> Pipeline:
        if self.graph is not None:
            self.graph.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self, name: str) -> dict[str, str]:
        env = {
            "CONVSYNC_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "CONVSYNC_DATABASE_URL": self.database_url,
            "CONVSYNC_TOPIC_PREFIX": self.settings.topic_prefix,
            "CONVSYNC_DB_SCHEMA": self.settings.db_schema,
            "CONVSYNC_PARTITIONS": str(self.settings.partitions),
            "CONVSYNC_APP_SECRET": SECRET,
            "CONVSYNC_VERIFY_TOKEN": VERIFY_TOKEN,
            "CONVSYNC_ADMIN_TOKEN": ADMIN_TOKEN,
            "CONVSYNC_PAGE_TOKENS": json.dumps(self.page_tokens()),
            "CONVSYNC_CRAWL_CALLS_PER_SECOND": "200",
            "CONVSYNC_CRAWL_GROUP": f"{self.settings.topic_prefix}-crawler",
            "CONVSYNC_MAPPER_METRICS_ADDR": "off",
            "CONVSYNC_STATE_DIR": str(self.log_dir / "state"),
            "CONVSYNC_LOG_LEVEL": "INFO",
            **self.extra_env,
            **self.env_for.get(name, {}),
        }
        if self.graph is not None:
            env["CONVSYNC_GRAPH_URL"] = self.graph.url
        return env

    def args(self, name: str) -> list[str]:
        if name == "gateway":
            return [
                *("gateway", "--host", "127.0.0.1", "--port", str(self.gateway_port)),
                *("--admin-host", "127.0.0.1", "--admin-port", str(self.admin_port)),
            ]
        if name == "materializer":
            return ["materialize", "--group", self.group, "--instance-id", f"{self.group}-1"]
        if name == "mapper":
            group = mapper_group(self.settings)
            return ["mapper", "--group", group, "--instance", f"{group}-1"]
        if name == "streams":
            return [
                "streams",
                "--web-port",
                str(self.streams_port),
                "--data-dir",
                str(self.log_dir / "streams-data"),
                "--replication-factor",
                "1",
            ]
        if name.startswith("crawler"):
            return ["crawler"]
        raise ValueError(name)

    def start(self, *names: str) -> None:
        """Start (or restart) the named components; wait for the gateway to be ready.

        The gateway publishes deliveries, which the mapper turns into events: starting
        the gateway starts the mapper too, unless it runs or is named.
        """
        if "gateway" in names and "mapper" not in names and "mapper" not in self.comps:
            names = ("mapper", *names)
        for name in names:
            sup = self.sups.setdefault(name, Supervisor(self.env(name), self.log_dir))
            if name in self.comps:
                self.restarts[name] += 1
            self.comps[name] = sup.start(name, *self.args(name))
            if name == "gateway":
                wait_ready(self.gateway_url, timeout=60)
            if name == "mapper" and self._reviver is None:
                self._reviver = threading.Thread(target=self._revive_stuck_mapper, daemon=True)
                self._reviver.start()

    def _revive_stuck_mapper(self) -> None:
        """Start the mapper again when its watchdog made it exit (code 3: a transaction
        stuck in librdkafka after a broker outage), as `convsync run`'s supervisor or
        Kubernetes would; a mapper a scenario kills is the scenario's to restart."""
        while not self._halt.wait(1.0):
            comp = self.comps.get("mapper")
            if comp is not None and comp.proc is not None and comp.proc.poll() == STUCK_EXIT:
                self.restarts["mapper (stuck, restarted)"] += 1
                self.comps["mapper"] = self.sups["mapper"].start("mapper", *self.args("mapper"))

    def kill(self, name: str) -> None:
        """SIGKILL the component's whole process group (the gateway's workers too)."""
        comp = self.comps[name]
        assert comp.proc is not None and comp.alive(), f"{name} was not running"
        os.killpg(comp.proc.pid, signal.SIGKILL)
        comp.proc.wait(timeout=30)

    def dead(self) -> list[str]:
        return [n for n, c in self.comps.items() if not c.alive()]

    def rss(self) -> dict[str, int]:
        """RSS per running component in kB (process tree)."""
        return {n: rss_kb(c.proc.pid) for n, c in self.comps.items() if c.proc and c.alive()}

    def stop(self) -> None:
        self._halt.set()
        if self._reviver is not None:
            self._reviver.join(10)
        for sup in self.sups.values():
            sup.stop(timeout=20)
        if self.graph is not None:
            self.graph.stop()
            self.graph.loop.close()  # GraphThread.stop() leaves its loop open
            self.graph = None

    def logs(self) -> list[Path]:
        return sorted(self.log_dir.glob("*.log"))


# --- settle and compare -----------------------------------------------------------------
def committed(settings: Settings, group: str) -> int:
    """Sum of the materializer's stored next offsets on the events topic."""
    with connect(settings) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT coalesce(sum(next_offset), 0) FROM {}.consumer_offsets"
                ' WHERE "group" = %s AND topic = %s'
            ).format(sql.Identifier(settings.db_schema)),
            (group, settings.topic("events")),
        ).fetchone()
    return int(str(row[0])) if row else 0


def high_watermark(settings: Settings, suffix: str = "events") -> int:
    topic = settings.topic(suffix)
    return sum(hi for _, hi in watermarks(settings, [topic]).get(topic, {}).values())


def wait_caught_up(settings: Settings, group: str, *, timeout: float) -> float:
    """Wait until the mapper mapped every delivery and the materializer stored every
    event; return seconds."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        try:
            target = mapper_lag(settings)
            if target == 0 and unread_events(settings, group) == 0:
                return time.monotonic() - start
        except (ConvsyncError, OSError) as e:
            last = str(e)
        else:
            last = f"mapper {target} deliveries behind"
        if time.monotonic() > deadline:
            raise AssertionError(f"mapper or materializer not caught up in {timeout:.0f}s ({last})")
        time.sleep(0.5)


class Progress(threading.Thread):
    """Samples (time, topic high watermark, stored offsets) to measure recovery times."""

    def __init__(self, settings: Settings, group: str, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.settings, self.group, self.every = settings, group, every
        self.samples: list[tuple[float, int | None, int | None]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.every):
            hw: int | None
            done: int | None
            try:
                hw = high_watermark(self.settings)
            except (ConvsyncError, OSError):
                hw = None
            try:
                done = committed(self.settings, self.group)
            except (ConvsyncError, OSError, Exception):  # noqa: BLE001 - Postgres down is a sample
                done = None
            self.samples.append((time.monotonic(), hw, done))

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def recovery(self, fault_end: float) -> float | None:
        """Seconds from ``fault_end`` until the stored offsets reached the high watermark
        seen at ``fault_end`` (None if never seen)."""
        target = next((hw for t, hw, _ in self.samples if t >= fault_end and hw is not None), None)
        if target is None:
            return None
        # The mapper's commit markers: at most one offset per partition no one reads.
        target -= self.settings.partitions
        for t, _, done in self.samples:
            if t >= fault_end and done is not None and done >= target:
                return round(t - fault_end, 2)
        return None


def dlq_count(settings: Settings) -> int:
    topic = settings.topic("dlq")
    return sum(hi - lo for lo, hi in watermarks(settings, [topic]).get(topic, {}).values())


def assert_exact(result: Comparison) -> None:
    """Postgres equals the truth: every message once, every conversation exact."""
    assert result.ok, result


def scan_secrets(paths: Iterable[Path], secrets: Sequence[str]) -> tuple[int, int, list[str]]:
    """Return (files, lines, hits) for ``secrets`` in ``paths`` (hits name file and secret)."""
    files = lines = 0
    hits: list[str] = []
    wanted = [s for s in secrets if s]
    for path in paths:
        files += 1
        text = path.read_text(errors="replace")
        lines += text.count("\n")
        for s in wanted:
            if s in text:
                hits.append(f"{path.name}: a secret of length {len(s)}")
    return files, lines, hits


def with_secret(settings: Settings) -> Settings:
    return settings.model_copy(update={"app_secret": SecretStr(SECRET)})


# --- results ----------------------------------------------------------------------------
@functools.cache
def results_dir() -> Path:
    """Where this session's scenario results go: ``CONVSYNC_FAULT_RESULTS``, else a fresh
    temporary folder made on first use; never the tracked tree (``python -m
    tests.fault.report --run`` is what updates the committed report)."""
    chosen = os.environ.get("CONVSYNC_FAULT_RESULTS")
    return Path(chosen) if chosen else Path(tempfile.mkdtemp(prefix="convsync-fault-results-"))


def comparison_figures(result: Comparison) -> dict[str, Any]:
    return {
        "messages expected": result.expected_messages,
        "messages stored": result.stored_messages,
        "lost (missing)": result.missing,
        "unexpected": result.unexpected,
        "duplicates": result.duplicates,
        "conversations expected / stored": (
            f"{result.conversations_expected} / {result.conversations_stored}"
        ),
        "conversation row mismatches": result.count_mismatches
        + result.watermark_mismatches
        + result.conversation_set_mismatches,
        "postgres equals truth": result.ok,
    }


def load_figures(load: Load) -> dict[str, Any]:
    return {
        "webhook bodies": len(load.bodies),
        "events sent (items)": sum(b.items for b in load.bodies),
        "POSTs (with retries)": load.posts,
        "answers": dict(sorted((str(k), v) for k, v in load.statuses.items())),
        "bodies acknowledged (200)": len(load.accepted),
        "events acknowledged": sum(b.items for b in load.accepted),
        "bodies answered non-200 first, then 200 on retry": load.retried_to_200,
        "bodies given up": load.gave_up,
        "achieved rate (bodies/s)": round(
            len(load.bodies) / max(0.001, load.finished - load.started), 1
        ),
    }


def write_result(
    number: int,
    title: str,
    *,
    done: str,
    scale: str,
    figures: dict[str, Any],
    seconds: float,
) -> Path:
    """Write one scenario's figures to ``scenario-<n>.json`` in :func:`results_dir`."""
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"scenario-{number}.json"
    data = {
        "number": number,
        "title": title,
        "done": done,
        "scale": scale,
        "seconds": round(seconds, 1),
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "figures": figures,
    }
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return path


def truth_of(bodies: Iterable[Body]) -> Truth:
    truth = Truth()
    for b in bodies:
        truth.add(b)
    return truth


def crawl_and_webhook_truth(world: GraphWorld, accepted: Iterable[Body]) -> Truth:
    """The truth of a run that crawls every page of ``world`` while ``accepted`` bodies
    are acknowledged: every crawled message, every webhook message and read."""
    truth = truth_of(accepted)
    for page in world.page_ids:
        truth.messages |= {(a, b, c, d, e) for a, b, c, d, e in world.expected(page)["messages"]}
    return truth


def check(settings: Settings, truth: Truth) -> Comparison:
    return compare(settings, truth.messages, truth.reads)


def read_topic(settings: Settings, suffix: str, *, timeout: float = 60.0) -> list[Message]:
    """Return every record of ``<prefix>.<suffix>`` (up to the high watermarks now)."""
    topic = settings.topic(suffix)
    marks = watermarks(settings, [topic]).get(topic, {})
    consumer = make_consumer(settings, f"fault-read-{uuid.uuid4().hex[:8]}")
    out: list[Message] = []
    try:
        consumer.assign([TopicPartition(topic, p, lo) for p, (lo, _) in marks.items()])
        left = {p for p, (lo, hi) in marks.items() if hi > lo}
        deadline = time.monotonic() + timeout
        while left:
            if time.monotonic() > deadline:
                raise AssertionError(f"read {len(out)} records of {topic}, partitions {left} left")
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            out.append(msg)
            part, offset = msg.partition(), msg.offset()
            if part is not None and offset is not None and offset + 1 >= marks[part][1]:
                left.discard(part)
    finally:
        consumer.close()
    return out
