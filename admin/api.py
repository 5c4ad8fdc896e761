"""Admin API handlers: ask for a sync, list and read conversations, set their tags."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime
from typing import Any, Final

import orjson
import psycopg
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from admin.settings import TAG, TAG_PATTERN
from admin.store import AdminStore
from convsync.errors import RetryableError
from convsync.settings import Settings
from producers.crawler.request import new_request, submit

log = logging.getLogger(__name__)

# 64: the longest page id and psid of the Kafka records (schemas/crawl.py, envelope.py).
# Patterns are matched with fullmatch: with re.match, "$" also matches before a final "\n".
ID_PATTERN: Final = r"^[A-Za-z0-9_.:-]{1,64}$"
_ID: Final = re.compile(ID_PATTERN)
_VERSION: Final = re.compile(r'^(?:W/)?"?(\d{1,18})"?$')
MAX_LIMIT: Final = 500


def dumps(value: Any) -> str:
    """Return ``value`` as JSON text (datetimes as RFC 3339)."""
    return orjson.dumps(value).decode()


def json_response(value: Any, *, status: int = 200, **headers: str) -> web.Response:
    """Return a JSON response of ``value``."""
    return web.json_response(value, status=status, dumps=dumps, headers=headers or None)


def problem(status: int, reason: str) -> web.Response:
    """Return a JSON error answer."""
    return json_response({"error": reason}, status=status)


class SyncBody(BaseModel):
    """Body of ``POST /pages/{page_id}/sync`` (optional)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    full: bool = False


class TagsBody(BaseModel):
    """Body of ``PATCH /conversations/{page_id}/{psid}``."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    tags: list[str] = Field(max_length=32)


class BadRequestError(Exception):
    """A request parameter is malformed; the message is the answer."""


def _ids(request: web.Request, *names: str) -> list[str]:
    values = [request.match_info[n] for n in names]
    for name, value in zip(names, values, strict=True):
        if not _ID.fullmatch(value):
            raise BadRequestError(f"{name} must match {ID_PATTERN}")
    return values


CURSOR_PATTERN: Final = r"^(?:n|-?[0-9]{1,17})~[A-Za-z0-9_.:-]{1,64}$"
_CURSOR: Final = re.compile(CURSOR_PATTERN)


def encode_cursor(cursor: tuple[int | None, str]) -> str:
    """Return the text of a keyset cursor: ``<µs since the epoch or n>~<psid>``."""
    at, psid = cursor
    return f"{'n' if at is None else at}~{psid}"


def decode_cursor(text: str) -> tuple[int | None, str]:
    """Return the keyset of a cursor. Raises BadRequestError."""
    if not _CURSOR.fullmatch(text):
        raise BadRequestError(f"cursor must match {CURSOR_PATTERN}")
    at, _, psid = text.partition("~")
    return (None if at == "n" else int(at)), psid


def _bool(value: str) -> bool:
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise BadRequestError("needs_reply must be true or false")


def _int(value: str, name: str, low: int, high: int) -> int:
    if not re.fullmatch(r"\d{1,9}", value) or not low <= int(value) <= high:
        raise BadRequestError(f"{name} must be an integer in [{low}, {high}]")
    return int(value)


def _since(value: str) -> datetime:
    try:
        at = datetime.fromisoformat(value)
    except ValueError as e:
        raise BadRequestError("since must be an ISO 8601 date-time") from e
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _etag(version: int) -> str:
    return f'"{version}"'


class AdminApi:
    """The handlers; ``store`` is set when the app starts."""

    def __init__(self, settings: Settings, *, submit_timeout: float = 30.0) -> None:
        self.settings = settings
        self.submit_timeout = submit_timeout
        self.store: AdminStore | None = None

    def _store(self) -> AdminStore:
        assert self.store is not None, "admin store used before the app started"
        return self.store

    async def sync(self, request: web.Request) -> web.Response:
        """POST /pages/{page_id}/sync: 202 with the crawl id (a running crawl is joined)."""
        (page_id,) = _ids(request, "page_id")
        body = SyncBody()
        if request.body_exists:  # read already, within the body deadline (convsync.http)
            raw = await request.read()
            if raw:
                try:
                    body = SyncBody.model_validate_json(raw)
                except ValidationError as e:
                    raise BadRequestError('body must be {"full": boolean}') from e
        store = self._store()
        try:
            # 1. One sync request of a page at a time (across gateway workers) ...
            async with store.pool.connection() as conn, conn.transaction():
                await store.lock_page(conn, page_id)
                # 2. ... sees the crawl queued or running, and joins it ...
                running = await store.running_crawl(conn, page_id)
                if running is not None:
                    log.info("sync of page %s joins crawl %s", page_id, running["crawl_id"])
                    return self._accepted(page_id, running["crawl_id"], running["status"], True)
                # 3. ... or records and produces a new request before the lock is released.
                record = new_request(page_id, full=body.full)
                await asyncio.to_thread(submit, self.settings, record, timeout=self.submit_timeout)
        except psycopg.Error as e:
            raise RetryableError(f"sync request failed: {e}") from e
        log.info("sync of page %s requested: crawl %s", page_id, record.crawl_id)
        return self._accepted(page_id, record.crawl_id, "queued", False)

    @staticmethod
    def _accepted(page_id: str, crawl_id: str, status: str, joined: bool) -> web.Response:
        return json_response(
            {"page_id": page_id, "crawl_id": crawl_id, "status": status, "joined": joined},
            status=202,
        )

    async def conversations(self, request: web.Request) -> web.Response:
        """GET /pages/{page_id}/conversations: filters and keyset pagination."""
        (page_id,) = _ids(request, "page_id")
        q = request.query
        for key in q:
            if key not in ("needs_reply", "since", "limit", "cursor"):
                raise BadRequestError(f"unknown parameter {key}")
        page = await self._store().conversations(
            page_id,
            needs_reply=_bool(q["needs_reply"]) if "needs_reply" in q else None,
            since=_since(q["since"]) if "since" in q else None,
            limit=_int(q["limit"], "limit", 1, MAX_LIMIT) if "limit" in q else 50,
            cursor=decode_cursor(q["cursor"]) if "cursor" in q else None,
        )
        return json_response(
            {
                "items": page.items,
                "next_cursor": encode_cursor(page.next_cursor) if page.next_cursor else None,
            }
        )

    async def conversation(self, request: web.Request) -> web.Response:
        """GET /conversations/{page_id}/{psid}: the row, its tags, messages and events."""
        page_id, psid = _ids(request, "page_id", "psid")
        q = request.query
        for key in q:
            if key != "limit":
                raise BadRequestError(f"unknown parameter {key}")
        limit = _int(q["limit"], "limit", 1, 1000) if "limit" in q else 200
        store = self._store()
        row = await store.conversation(page_id, psid)
        if row is None:
            return problem(404, "no such conversation")
        row["messages"] = await store.messages(page_id, psid, limit)
        row["events"] = await store.events(page_id, psid, limit)
        return json_response(row, ETag=_etag(int(row["tags_version"])))

    async def patch(self, request: web.Request) -> web.Response:
        """PATCH /conversations/{page_id}/{psid}: replace the tags, If-Match required."""
        page_id, psid = _ids(request, "page_id", "psid")
        if_match = request.headers.get("If-Match")
        if if_match is None:
            return problem(428, "If-Match: <version> is required (the ETag of GET)")
        m = _VERSION.fullmatch(if_match.strip())
        if m is None:
            raise BadRequestError("If-Match must be a version number (the ETag of GET)")
        try:
            body = TagsBody.model_validate_json(await request.read())
        except ValidationError as e:
            raise BadRequestError('body must be {"tags": [tag, ...]} (at most 32)') from e
        for tag in body.tags:
            if not TAG.fullmatch(tag):
                raise BadRequestError(f"tags must match {TAG_PATTERN}")
        tags = sorted(set(body.tags))
        outcome = await self._store().set_tags(page_id, psid, tags, int(m.group(1)))
        if outcome == "missing":
            return problem(404, "no such conversation")
        if outcome == "stale":
            return problem(412, "the tags changed since that version; GET them again")
        return json_response(
            {"page_id": page_id, "psid": psid, "tags": tags, "tags_version": outcome},
            ETag=_etag(int(outcome)),
        )
