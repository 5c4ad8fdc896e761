"""Admin API of the pages convsync syncs and their tokens (``/admin/pages``).

``PUT /admin/pages/{page_id}`` adds or updates a page and its token (204; the crawler
uses the new token within ``CONVSYNC_CRAWL_TOKEN_REFRESH`` seconds and resumes the
page's paused crawl); ``GET`` lists or reads pages, never their tokens; ``DELETE``
stops syncing a page (its data stays). The store is ``convsync/pages.py``.
"""

from __future__ import annotations

import logging
from typing import Any, Final, Literal

import orjson
import psycopg
from aiohttp import web
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from admin.api import BadRequestError, json_response, problem
from convsync import pages
from convsync.errors import ConfigError, RetryableError
from convsync.settings import Settings

log = logging.getLogger(__name__)

LIST_LIMIT: Final = 500


class PageBody(BaseModel):
    """Body of ``PUT /admin/pages/{page_id}``."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    access_token: str = Field(min_length=1, max_length=pages.MAX_TOKEN)
    platform: Literal["messenger", "instagram"] = "messenger"
    name: str | None = Field(default=None, max_length=pages.MAX_NAME)

    @field_validator("access_token", "name")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        # Postgres text cannot hold NUL: refused as bad input, not a 503.
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


class PagesApi:
    """The ``/admin/pages`` handlers; ``pool`` is set by the admin app's lifecycle."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.schema = settings.db_schema
        self.pool: AsyncConnectionPool[Any] | None = None

    def _page_id(self, request: web.Request) -> str:
        page_id = request.match_info["page_id"]
        if not pages.PAGE_ID.fullmatch(page_id):
            raise BadRequestError("page_id must be the page's (or account's) numeric id")
        return page_id

    async def _run(self, action: Any) -> Any:
        assert self.pool is not None
        try:
            async with self.pool.connection() as conn:
                return await action(conn)
        except psycopg.Error as e:
            raise RetryableError(f"pages: {e}") from e

    async def put(self, request: web.Request) -> web.StreamResponse:
        """Add or update a page and its token: 204."""
        page_id = self._page_id(request)
        try:
            body = PageBody.model_validate(orjson.loads(await request.read()))
        except orjson.JSONDecodeError:
            raise BadRequestError("body must be a JSON object") from None
        except ValidationError as e:
            # Names the fields only: the input holds a token, never echoed.
            bad = sorted({".".join(map(str, err["loc"])) or "body" for err in e.errors()})
            raise BadRequestError(
                f"bad fields: {', '.join(bad)} (access_token: a string; platform:"
                " messenger or instagram; name: a string of up to 200 characters)"
            ) from None
        try:
            cipher = pages.TokenCipher(self.settings.secret_key)
        except ConfigError as e:
            log.warning("page %s not stored: %s", page_id, e)
            return problem(503, "page tokens cannot be stored: CONVSYNC_SECRET_KEY is not set")
        try:
            added = await self._run(
                lambda c: pages.put_page(
                    c,
                    self.schema,
                    cipher,
                    page_id=page_id,
                    platform=body.platform,
                    name=body.name,
                    token=body.access_token,
                )
            )
        except ValueError as e:
            raise BadRequestError(str(e)) from None
        log.info("page %s %s through the admin API", page_id, "added" if added else "updated")
        return web.Response(status=204)

    async def get(self, request: web.Request) -> web.StreamResponse:
        """Return one page (never its token)."""
        page_id = self._page_id(request)
        info = await self._run(lambda c: pages.get_page(c, self.schema, page_id))
        if info is None:
            return problem(404, f"no page {page_id}")
        return json_response(info.to_json())

    async def list(self, request: web.Request) -> web.StreamResponse:
        """Return the pages by id, ``limit`` at a time after ``after`` (never tokens)."""
        after = request.query.get("after", "")
        if "after" in request.query and not pages.PAGE_ID.fullmatch(after):
            raise BadRequestError("after must be a page id")
        try:
            limit = int(request.query.get("limit", str(LIST_LIMIT)))
        except ValueError:
            raise BadRequestError("limit must be an integer") from None
        if not 1 <= limit <= LIST_LIMIT:
            raise BadRequestError(f"limit must be 1 to {LIST_LIMIT}")
        found = await self._run(
            lambda c: pages.list_pages(c, self.schema, after=after, limit=limit)
        )
        body: dict[str, Any] = {"pages": [p.to_json() for p in found]}
        body["next_after"] = found[-1].page_id if len(found) == limit else None
        return json_response(body)

    async def delete(self, request: web.Request) -> web.StreamResponse:
        """Stop syncing a page (its token erased, its data kept): 204, or 404."""
        page_id = self._page_id(request)
        if not await self._run(lambda c: pages.remove_page(c, self.schema, page_id)):
            return problem(404, f"no page {page_id}")
        log.info("page %s removed through the admin API: not synced any more", page_id)
        return web.Response(status=204)
