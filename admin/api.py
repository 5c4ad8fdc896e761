"""Admin API handlers: ask for a sync, list and read conversations, set their tags."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import orjson
import psycopg
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from admin.cursors import CursorError, Cursors
from admin.lists import ConversationFilter, SortKey, Timeline, timeline_scope
from admin.settings import TAG, TAG_PATTERN
from admin.store import AdminStore, Page
from convsync.errors import RetryableError
from convsync.settings import Settings
from producers.crawler.request import new_request, submit
from producers.crawler.urls import GRAPH_ID

log = logging.getLogger(__name__)

# 64: the longest page id and psid of the Kafka records (schemas/crawl.py, envelope.py).
# Patterns are matched with fullmatch: with re.match, "$" also matches before a final "\n".
ID_PATTERN: Final = r"^[A-Za-z0-9_.:-]{1,64}$"
_ID: Final = re.compile(ID_PATTERN)
_VERSION: Final = re.compile(r'^(?:W/)?"?(\d{1,18})"?$')
MAX_LIMIT: Final = 500
# The longest name prefix: as long as the longest name a contact keeps (its MAX_TEXT).
MAX_NAME_PREFIX: Final = 256
# A cursor's sort key: µs since the epoch (None: a conversation never messaged), an id.
_KEY_SHAPE: Final = ((int, type(None)), (str,))


def _json_default(value: Any) -> Any:
    # numeric columns (an edit's num_edit) come as Decimal, which orjson does not take.
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def dumps(value: Any) -> str:
    """Return ``value`` as JSON text (datetimes as RFC 3339, numerics as numbers)."""
    return orjson.dumps(value, default=_json_default).decode()


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
    # The page id is then an Instagram account's, crawled through this linked page.
    via_page: str | None = None


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


def _known(q: Any, *names: str) -> None:
    for key in q:
        if key not in names:
            raise BadRequestError(f"unknown parameter {key}")


def _limit(q: Any, default: int) -> int:
    return _int(q["limit"], "limit", 1, MAX_LIMIT) if "limit" in q else default


def _since(value: str) -> datetime:
    try:
        at = datetime.fromisoformat(value)
    except ValueError as e:
        raise BadRequestError("since must be an ISO 8601 date-time") from e
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _name(value: str) -> str:
    if not 1 <= len(value) <= MAX_NAME_PREFIX or "\x00" in value:
        raise BadRequestError(
            f"name must be 1 to {MAX_NAME_PREFIX} characters (a prefix of the user's name)"
        )
    return value


def _etag(version: int) -> str:
    return f'"{version}"'


class AdminApi:
    """The handlers; ``store`` is set when the app starts."""

    def __init__(self, settings: Settings, *, submit_timeout: float = 30.0) -> None:
        self.settings = settings
        self.submit_timeout = submit_timeout
        self.store: AdminStore | None = None
        self.cursors = Cursors(settings.admin_token.get_secret_value())

    def _after(self, q: Any, scope: str) -> SortKey | None:
        """The sort key of the ``cursor`` parameter, checked against ``scope``."""
        if "cursor" not in q:
            return None
        try:
            at, key = self.cursors.decode(scope, q["cursor"], _KEY_SHAPE)
        except CursorError as e:
            raise BadRequestError(str(e)) from e
        return (None if at is None else int(at)), str(key)

    def _next(self, scope: str, page: Page) -> str | None:
        return None if page.after is None else self.cursors.encode(scope, page.after)

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
                    raise BadRequestError(
                        'body must be {"full": boolean, "via_page": linked page id (Instagram)}'
                    ) from e
        via = body.via_page
        if via is not None and (not GRAPH_ID.fullmatch(via) or via == page_id):
            raise BadRequestError("via_page must be the id of the Instagram account's linked page")
        store = self._store()
        try:
            # 1. One sync request of a page at a time (across gateway workers) ...
            async with store.pool.connection() as conn, conn.transaction():
                await store.lock_page(conn, page_id)
                # 2. ... sees the crawl queued or running, and joins it ...
                running = await store.running_crawl(conn, page_id)
                if running is not None:
                    log.info("sync of page %s joins crawl %s", page_id, running["crawl_id"])
                    crawl_id = running["crawl_id"]
                    return self._accepted(request, page_id, crawl_id, running["status"], True)
                # 3. ... or records and produces a new request before the lock is released.
                record = new_request(page_id, full=body.full, via_page=via)
                await asyncio.to_thread(submit, self.settings, record, timeout=self.submit_timeout)
        except psycopg.Error as e:
            raise RetryableError(f"sync request failed: {e}") from e
        log.info("sync of page %s requested: crawl %s", page_id, record.crawl_id)
        return self._accepted(request, page_id, record.crawl_id, "queued", False)

    @staticmethod
    def _accepted(
        request: web.Request, page_id: str, crawl_id: str, status: str, joined: bool
    ) -> web.Response:
        # Location: the crawl's own resource (GET /crawls/{crawl_id}, admin/crawls.py).
        location = str(request.app.router["crawl"].url_for(crawl_id=crawl_id))
        return json_response(
            {"page_id": page_id, "crawl_id": crawl_id, "status": status, "joined": joined},
            status=202,
            Location=location,
        )

    async def conversations(self, request: web.Request) -> web.Response:
        """GET /pages/{page_id}/conversations: filters and keyset pagination."""
        (page_id,) = _ids(request, "page_id")
        q = request.query
        _known(q, "needs_reply", "since", "tag", "name", "limit", "cursor")
        tag = q.get("tag")
        if tag is not None and not TAG.fullmatch(tag):
            raise BadRequestError(f"tag must match {TAG_PATTERN}")
        f = ConversationFilter(
            needs_reply=_bool(q["needs_reply"]) if "needs_reply" in q else None,
            since=_since(q["since"]) if "since" in q else None,
            tag=tag,
            name=_name(q["name"]) if "name" in q else None,
        )
        scope = f.scope(page_id)
        page = await self._store().conversations(
            page_id, f, limit=_limit(q, 50), after=self._after(q, scope)
        )
        return json_response({"items": page.items, "next_cursor": self._next(scope, page)})

    async def timeline(self, request: web.Request) -> web.Response:
        """GET /conversations/{page_id}/{psid}/messages and .../events: newest first,
        keyset pagination."""
        page_id, psid = _ids(request, "page_id", "psid")
        which: Timeline = "messages" if request.path.endswith("/messages") else "events"
        q = request.query
        _known(q, "limit", "cursor")
        scope = timeline_scope(which, page_id, psid)
        store = self._store()
        page = await store.timeline(
            which, page_id, psid, limit=_limit(q, 50), after=self._after(q, scope)
        )
        # An empty first page: a conversation without messages, or no conversation.
        if not page.items and "cursor" not in q and await store.conversation(page_id, psid) is None:
            return problem(404, "no such conversation")
        return json_response({"items": page.items, "next_cursor": self._next(scope, page)})

    async def conversation(self, request: web.Request) -> web.Response:
        """GET /conversations/{page_id}/{psid}: the row, its tags, and the first page of
        its messages and of its events (with the cursors of the next ones)."""
        page_id, psid = _ids(request, "page_id", "psid")
        q = request.query
        _known(q, "limit")
        limit = _int(q["limit"], "limit", 1, 1000) if "limit" in q else 200
        store = self._store()
        row = await store.conversation(page_id, psid)
        if row is None:
            return problem(404, "no such conversation")
        for which in ("messages", "events"):
            page = await store.timeline(which, page_id, psid, limit=limit, after=None)
            row[which] = page.items
            row[f"{which}_next_cursor"] = self._next(timeline_scope(which, page_id, psid), page)
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
