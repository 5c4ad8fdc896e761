"""The admin sub-application: routes, auth, error answers, pool and sampler lifecycle.

It is served on the gateway's private listener, never on the webhook port: the command
composes that listener (``cli/listeners.py``) with :func:`mount_admin`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Final

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from admin.api import AdminApi, BadRequestError, problem
from admin.auth import Sessions, auth_middleware, check_token
from admin.crawls import CrawlsApi
from admin.dashboard import Dashboard
from admin.pages import PagesApi
from admin.settings import AdminSettings
from admin.store import AdminStore
from convsync.errors import RetryableError
from convsync.http import Deadlines, body_deadline
from convsync.settings import Settings

log = logging.getLogger(__name__)

PREFIX: Final = "/admin"
# The largest body of the API: a tags PATCH (32 tags of 64 characters) or the login form.
MAX_BODY: Final = 64 * 1024
OPENAPI: Final = Path(__file__).resolve().parent / "openapi.yaml"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequestError as e:
        return problem(400, str(e))
    except RetryableError as e:
        log.warning("admin %s %s unavailable: %s", request.method, request.path, e)
        return problem(503, "backend unavailable, retry")


async def _openapi(_request: web.Request) -> web.StreamResponse:
    return web.FileResponse(OPENAPI, headers={"Content-Type": "application/yaml"})


def make_admin_app(
    settings: Settings, admin: AdminSettings | None = None, deadlines: Deadlines | None = None
) -> web.Application:
    """Return the admin application (mount it with :func:`mount_admin`).

    Raises :class:`ConfigError` when the admin token is one an attacker could guess.
    """
    admin = admin or AdminSettings()
    deadlines = deadlines or Deadlines()
    token = settings.admin_token.get_secret_value()
    check_token(token)
    sessions = Sessions(token, seconds=admin.session_seconds)
    api = AdminApi(settings)
    dash = Dashboard(settings, admin, sessions)
    app = web.Application(
        client_max_size=MAX_BODY,
        middlewares=[
            auth_middleware(token, sessions, unauthorized=dash.login_form),
            body_deadline(deadlines.body),
            _errors,
        ],
    )
    r = app.router
    pages = PagesApi(settings)
    # (names starting with "page:" are HTML pages, answered with the login form)
    r.add_get("/pages", pages.list, name="pages:list")
    r.add_put("/pages/{page_id}", pages.put, name="pages:put")
    r.add_get("/pages/{page_id}", pages.get, name="pages:get")
    r.add_delete("/pages/{page_id}", pages.delete, name="pages:delete")
    r.add_post("/pages/{page_id}/sync", api.sync, name="sync")
    crawls = CrawlsApi(api.cursors)
    r.add_get("/pages/{page_id}/crawls", crawls.page_crawls, name="page_crawls")
    r.add_get("/crawls/{crawl_id}", crawls.crawl, name="crawl")
    r.add_delete("/crawls/{crawl_id}", crawls.cancel, name="cancel_crawl")
    r.add_get("/pages/{page_id}/conversations", api.conversations, name="conversations")
    r.add_get("/conversations/{page_id}/{psid}", api.conversation, name="conversation")
    r.add_get("/conversations/{page_id}/{psid}/messages", api.timeline, name="messages")
    r.add_get("/conversations/{page_id}/{psid}/events", api.timeline, name="events")
    r.add_patch("/conversations/{page_id}/{psid}", api.patch, name="patch")
    r.add_get("/openapi.yaml", _openapi, name="openapi")
    r.add_get("/dashboard", dash.page, name="page:dashboard")
    r.add_get("/dashboard.js", dash.script, name="script")
    r.add_get("/dashboard.css", dash.style, name="style")
    r.add_get("/dashboard/data", dash.data, name="data")
    r.add_post("/login", dash.login, name="login")

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        # min_size 0: a gateway whose database is down still takes webhooks.
        pool = AsyncConnectionPool(
            settings.database_url.get_secret_value(),
            min_size=0,
            max_size=4,
            kwargs={"application_name": "convsync-admin", "autocommit": True},
            open=False,
        )
        await pool.open()
        store = AdminStore(pool, settings.db_schema)
        api.store = dash.store = crawls.store = store
        pages.pool = pool
        config = asyncio.create_task(_write_auto_clear(store, admin.auto_clear_tags))
        yield
        config.cancel()
        await asyncio.gather(config, return_exceptions=True)
        await dash.sampler.stop()
        await pool.close()

    app.cleanup_ctx.append(lifecycle)
    return app


async def _write_auto_clear(store: AdminStore, tags: tuple[str, ...]) -> None:
    """Write the configured auto-clear tags, retrying until the database takes them."""
    delay = 1.0
    while True:
        try:
            await store.set_auto_clear(tags)
        except RetryableError as e:
            log.warning("auto-clear tags not written yet (retry in %.0fs): %s", delay, e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
            continue
        log.info("auto-clear tags: %s", ", ".join(tags) or "(none)")
        return


def mount_admin(
    app: web.Application,
    settings: Settings,
    admin: AdminSettings | None = None,
    deadlines: Deadlines | None = None,
) -> None:
    """Mount the admin API under ``/admin`` and send ``/`` and ``/dashboard`` to its page.

    Raises :class:`ConfigError` when the admin token is one an attacker could guess.
    """

    async def dashboard(_request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"{PREFIX}/dashboard")

    app.add_subapp(PREFIX, make_admin_app(settings, admin, deadlines))
    app.router.add_get("/dashboard", dashboard)
    app.router.add_get("/", dashboard)
