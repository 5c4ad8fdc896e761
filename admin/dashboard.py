"""The dashboard: a login form, the page, and the JSON of its live figures."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
import psycopg
from aiohttp import web
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from admin.api import json_response
from admin.auth import COOKIE, session_value
from admin.settings import AdminSettings
from admin.status import Status, collect
from admin.store import AdminStore
from convsync.errors import RetryableError
from convsync.kafka import read_watermarks
from convsync.settings import Settings

log = logging.getLogger(__name__)

STATIC: Final = Path(__file__).resolve().parent / "static"
_SECURITY: Final = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def dlq_tail(settings: Settings, n: int, *, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Return the last ``n`` records of ``<prefix>.dlq`` (over all partitions), newest first.

    Raises :class:`RetryableError` when Kafka cannot be read.
    """
    topic = settings.topic("dlq")
    consumer = Consumer(
        {
            **settings.kafka_config(),
            "group.id": "convsync-admin-dlq",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    out: list[dict[str, Any]] = []
    try:
        md = consumer.list_topics(topic, timeout=timeout)
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None or n == 0:
            return []
        wanted: list[TopicPartition] = []
        for p in meta.partitions:
            lo, hi = read_watermarks(consumer, TopicPartition(topic, p), timeout=timeout)
            if hi > lo:
                wanted.append(TopicPartition(topic, p, max(lo, hi - n)))
        if not wanted:
            return []
        consumer.assign(wanted)
        pending = {tp.partition for tp in wanted}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                    continue
                raise RetryableError(f"DLQ read failed: {err}")
            out.append(_dlq_entry(msg.partition() or 0, msg.offset() or 0, msg.value()))
    except KafkaException as e:
        raise RetryableError(f"DLQ read failed: {e}") from e
    finally:
        consumer.close()
    out.sort(key=lambda e: (e.get("failed_at") or 0, e["offset"]), reverse=True)
    return out[:n]


def _dlq_entry(partition: int, offset: int, value: bytes | None) -> dict[str, Any]:
    base: dict[str, Any] = {"dlq_partition": partition, "offset": offset}
    try:
        record = orjson.loads(value or b"null")
    except orjson.JSONDecodeError:
        return {**base, "reason": "(DLQ record is not JSON)"}
    if not isinstance(record, dict):
        return {**base, "reason": "(DLQ record is not an object)"}
    keep = ("reason", "error_type", "component", "topic", "partition", "failed_at")
    return {**base, **{k: record.get(k) for k in keep}, "source_offset": record.get("offset")}


@dataclass
class Sampler:
    """Samples ``convsync status`` periodically into a ring buffer, once someone looks."""

    settings: Settings
    admin: AdminSettings
    samples: deque[dict[str, Any]] = field(init=False)
    status: dict[str, Any] | None = None
    dlq: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _first: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.samples = deque(maxlen=self.admin.samples)

    async def ensure_running(self) -> None:
        """Start sampling (first call, or after the task died) and wait for a first sample.

        Raises :class:`RetryableError` when no sample could be taken in 30 s.
        """
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="admin-sampler")
        try:
            await asyncio.wait_for(self._first.wait(), timeout=30)
        except TimeoutError as e:
            raise RetryableError("no dashboard sample taken yet") from e

    async def stop(self) -> None:
        """Stop sampling."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                await self.sample()
            except (RetryableError, psycopg.Error) as e:
                # Reported on the page (errors) and in the log; the next sample retries.
                self.errors = [f"sample failed: {e}"]
                log.warning("dashboard sample failed: %s", e)
            self._first.set()
            await asyncio.sleep(self.admin.sample_seconds)

    async def sample(self) -> None:
        """Take one sample: status (lag, row counts), events offsets, DLQ tail."""
        status: Status = await asyncio.to_thread(collect, self.settings)
        errors = list(status.errors)
        try:
            self.dlq = await asyncio.to_thread(dlq_tail, self.settings, self.admin.dlq_tail)
        except RetryableError as e:
            errors.append(str(e))
        events_topic = self.settings.topic("events")
        produced = sum(status.high_watermarks.get(events_topic, {}).values())
        now = time.time()
        point: dict[str, Any] = {
            "t": now,
            "produced": produced,
            "rows": status.events_rows,
            "events_per_s": None,
            "rows_per_s": None,
        }
        if self.samples:
            last = self.samples[-1]
            dt = now - last["t"]
            if dt > 0:
                point["events_per_s"] = max(0.0, (produced - last["produced"]) / dt)
                point["rows_per_s"] = max(0.0, (status.events_rows - last["rows"]) / dt)
        self.samples.append(point)
        self.status = status.as_json()
        self.errors = errors
        if errors:
            log.warning("dashboard sample incomplete: %s", "; ".join(errors))


class Dashboard:
    """Dashboard handlers; ``store`` is set when the app starts."""

    def __init__(self, settings: Settings, admin: AdminSettings) -> None:
        self.settings = settings
        self.token = settings.admin_token.get_secret_value()
        self.sampler = Sampler(settings, admin)
        self.store: AdminStore | None = None

    async def page(self, _request: web.Request) -> web.StreamResponse:
        """GET /dashboard: the HTML page (its script fetches /dashboard/data)."""
        return web.FileResponse(STATIC / "dashboard.html", headers=_SECURITY)

    async def script(self, _request: web.Request) -> web.StreamResponse:
        """GET /dashboard.js."""
        return web.FileResponse(STATIC / "dashboard.js", headers=_SECURITY)

    async def style(self, _request: web.Request) -> web.StreamResponse:
        """GET /dashboard.css."""
        return web.FileResponse(STATIC / "dashboard.css", headers=_SECURITY)

    async def login_form(self, _request: web.Request, *, status: int = 401) -> web.Response:
        """The login form (the answer to an unauthenticated page request)."""
        html = (STATIC / "login.html").read_text(encoding="utf-8")
        return web.Response(text=html, content_type="text/html", status=status, headers=_SECURITY)

    async def login(self, request: web.Request) -> web.Response:
        """POST /login: a right token sets the HttpOnly session cookie (303 to the page)."""
        form = await request.post()
        given = str(form.get("token", "")).encode("utf-8", "surrogateescape")
        if not self.token or not hmac.compare_digest(given, self.token.encode()):
            log.info("dashboard login refused")
            return await self.login_form(request, status=403)
        base = request.path.rsplit("/", 1)[0]
        response = web.Response(status=303, headers={"Location": f"{base}/dashboard"})
        response.set_cookie(
            COOKIE,
            session_value(self.token),
            httponly=True,
            samesite="Strict",
            path=base or "/",
            secure=request.secure,
        )
        return response

    async def data(self, _request: web.Request) -> web.Response:
        """GET /dashboard/data: every figure of the page as JSON."""
        assert self.store is not None
        await self.sampler.ensure_running()
        overview = await self.store.overview()
        status = self.sampler.status or {}
        return json_response(
            {
                **overview,
                "lags": status.get("lags", []),
                "lag_by_group": status.get("lag_by_group", {}),
                "dlq_records": status.get("dlq_records", 0),
                "events_rows": status.get("events_rows", 0),
                "conversations_rows": status.get("conversations_rows", 0),
                "rates": list(self.sampler.samples),
                "dlq_recent": self.sampler.dlq,
                "errors": self.sampler.errors,
                "sampled_every_s": self.sampler.admin.sample_seconds,
            }
        )
