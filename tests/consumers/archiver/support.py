"""What the archiver tests share: servers in a thread, a recording listener, a topic +
schema pair with the steps between them, and readers of the media folder."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from psycopg import sql
from psycopg.rows import dict_row
from pydantic import SecretStr

from consumers.archiver import Archiver, ArchiverSettings, Totals
from consumers.materializer import BatchConfig, Materializer
from convsync.db import connect
from convsync.settings import Settings
from deploy.postgres_local import LocalPostgres
from deploy.simulator.graph_api import GraphWorld
from deploy.simulator.media import MediaServer, expected_outcome
from deploy.simulator.webhooks import WebhookSender
from producers.crawler.parse import message_envelope
from producers.webhook.mapping import map_item
from schemas.crawl import ConversationTodo
from schemas.envelope import Envelope
from schemas.migrate import apply_migrations
from tests.consumers.helpers import produce

T = TypeVar("T")
MAX_BYTES = 1024 * 1024  # the tests' CONVSYNC_MEDIA_MAX_BYTES
PAGE = "100200300"


class LoopThread:
    """An asyncio loop in a daemon thread, for servers the (sync) tests talk to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Recorder:
    """A TCP listener that accepts and counts connections and sends nothing back: a
    host the archiver must never reach."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        async def handle(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self._server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def media_settings(media: MediaServer, media_dir: Path, **overrides: Any) -> ArchiverSettings:
    """Settings that allow exactly the fake CDN's host:port (loopback allowed), with
    short retry delays and a 1 MiB limit."""
    host_port = media.base_url.removeprefix("http://")
    values: dict[str, Any] = {
        "dir": media_dir,
        "hosts": [host_port],
        "allow_loopback": True,
        "max_bytes": MAX_BYTES,
        "retry_base": 0.05,
        "retry_max": 0.2,
        "poll_interval": 0.1,
        "timeout": 20.0,
        **overrides,
    }
    return ArchiverSettings(**values)


@dataclass
class Pipeline:
    """Kafka topics and a schema of this test's own, with the steps between them."""

    settings: Settings

    def store(self, events: Sequence[Envelope]) -> None:
        """Produce ``events`` and materialize them (the projection the view reads)."""
        produce(self.settings, events)
        Materializer.from_settings(
            self.settings, group="t-materializer", batch=BatchConfig(max_wait=0.05)
        ).run_to_end()

    def archive(self, media: ArchiverSettings, *, timeout: float = 120.0) -> Totals:
        """Run the archiver in this process until everything is settled."""

        async def main() -> Totals:
            archiver = Archiver(self.settings, media, drain=True, serve_metrics=False)
            return await asyncio.wait_for(archiver.run(asyncio.Event()), timeout)

        return asyncio.run(main())

    def rows(self) -> list[dict[str, Any]]:
        """Return every row of the ``attachments`` view."""
        query = sql.SQL("SELECT * FROM {}.attachments ORDER BY event_id, idx").format(
            sql.Identifier(self.settings.db_schema)
        )
        with connect(self.settings) as conn, conn.cursor(row_factory=dict_row) as cur:
            return list(cur.execute(query).fetchall())


def webhook_message(
    sender: WebhookSender, urls: Sequence[str | None], *, psid: str | None = None
) -> Envelope:
    """Return the envelope the gateway makes of a message carrying ``urls``."""
    attachments = [{"type": "image", "payload": {"url": u} if u is not None else {}} for u in urls]
    item = sender.message(PAGE, psid or sender.psid(), attachments=attachments)
    return map_item(PAGE, None, item, "messaging")


def crawled_messages(world: GraphWorld) -> list[Envelope]:
    """Return the crawler's envelopes of every textless (attachment) message of ``world``."""
    out = []
    for page_id, convs in world.conversations.items():
        for conv in convs:
            if conv.psid is None:
                continue
            todo = ConversationTodo(thread_id=conv.thread_id, psid=conv.psid, updated_at=0)
            for i, m in enumerate(conv.messages):
                if m.text is None and not m.malformed:
                    env = message_envelope(world.message_json(conv, i), page_id=page_id, todo=todo)
                    assert isinstance(env, Envelope), env
                    out.append(env)
    return out


def files_on_disk(media_dir: Path) -> dict[str, str]:
    """Return {relative path: sha256 of its bytes} of every final file (not temp files)."""
    out = {}
    for path in media_dir.rglob("*"):
        if path.is_file() and ".partial" not in path.parts:
            out[str(path.relative_to(media_dir))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def partials(media_dir: Path) -> list[Path]:
    """Return the temp files left in the media folder."""
    folder = media_dir / ".partial"
    return sorted(folder.iterdir()) if folder.exists() else []


def check_truth(pipeline: Pipeline, media_dir: Path) -> list[dict[str, object]]:
    """Assert every row of the view against the fake CDN's truth; return the rows."""
    rows = pipeline.rows()
    assert rows
    for row in rows:
        url = str(row["url"])
        outcome = expected_outcome(url, max_bytes=MAX_BYTES)
        assert (row["status"], row["error"] or row["sha256"]) == outcome, row
        if row["status"] == "stored":
            data = (media_dir / str(row["storage_key"])).read_bytes()
            assert hashlib.sha256(data).hexdigest() == row["sha256"]
            assert len(data) == row["size"]
    return rows


def on_private_postgres(settings: Settings, postgres: LocalPostgres) -> Settings:
    """``settings`` pointed at a new migrated schema of a private Postgres (a new one: as
    root, a private cluster's folder is derived from the test's tmp_path, so a rerun with
    the same --basetemp finds the last run's cluster and its rows)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    moved = settings.model_copy(
        update={"database_url": SecretStr(postgres.url), "db_schema": schema}
    )
    with connect(moved) as conn:
        apply_migrations(conn, schema=schema)
    return moved
