"""A fake Meta Graph API (aiohttp) serving seeded pages, conversations and messages.

Deterministic from a seed. It serves ``/{page}/conversations`` and
``/{thread}/messages`` with cursors, the User Profile API (``/{user}?fields=``, some
users' profiles refused with a permission error), absolute ``paging.next`` URLs, ``limit`` caps and
usage headers, and can inject faults: 5xx, broken JSON, throttling with a regain time,
a per-page call-rate limit, permanent errors, conversations without a user participant,
messages without text, old messages without details and malformed records, and hostile
``paging.next`` links pointing at another host, an outage after a number of calls
(``fail_after_calls``) and single conversations that keep failing (``failing_threads``,
permanently or transiently). Given the app secret, it refuses calls
without the right ``appsecret_proof``, like Meta with "Require App Secret" on.
``GET /_expected/{page}`` (and :meth:`GraphWorld.expected`) is the truth to compare with.

A page may have a linked Instagram account (:meth:`GraphWorld.link_instagram`, its inbox
made by :mod:`deploy.simulator.graph_instagram`): ``/{page}/conversations?platform=instagram``
lists the account's conversations with that page's token, participants and senders
named by ``username``, shared posts in ``shares``.

The server and its handlers live here; the seeded data in
:mod:`deploy.simulator.graph_world`, the fault switches and call limits in
:mod:`deploy.simulator.graph_faults`. The names callers use (``GraphWorld``,
``Faults``, ``FakeConversation``...) are importable from this module as before.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any, Final

import orjson
from aiohttp import web
from yarl import URL

from deploy.simulator.graph_faults import THROTTLE_CODES, Faults, PageCalls, admit, graph_error
from deploy.simulator.graph_world import (
    BASE_MS,
    FakeConversation,
    FakeMessage,
    GraphWorld,
    graph_time,
)

__all__ = [
    "API_VERSION",
    "BASE_MS",
    "THROTTLE_CODES",
    "FakeConversation",
    "FakeMessage",
    "Faults",
    "GraphApiServer",
    "GraphWorld",
    "graph_time",
    "serve_forever",
    "token_for",
]

API_VERSION: Final = "v21.0"


def token_for(page_id: str) -> str:
    """Return the fake's access token of ``page_id``."""
    return f"tok-{page_id}"


def _cursor(index: int) -> str:
    return base64.urlsafe_b64encode(f"i:{index}".encode()).decode()


def _uncursor(value: str | None) -> int:
    if not value:
        return 0
    try:
        return int(base64.urlsafe_b64decode(value.encode()).decode().split(":", 1)[1])
    except (ValueError, IndexError) as e:
        raise web.HTTPBadRequest(text='{"error":{"code":100,"message":"bad cursor"}}') from e


class GraphApiServer:
    """The aiohttp application around a :class:`GraphWorld`; ``start()`` binds a port."""

    def __init__(
        self,
        world: GraphWorld,
        *,
        conversations_cap: int = 25,
        messages_cap: int = 25,
        clock: Callable[[], float] = time.monotonic,
        app_secret: str | None = None,
    ) -> None:
        self.world = world
        self.conversations_cap = conversations_cap
        self.messages_cap = messages_cap
        self.clock = clock
        # With an app secret every call must carry appsecret_proof (checked, counted).
        self.app_secret = app_secret
        self.proofs_checked = 0
        # Page tokens that differ from token_for(page), and tokens Meta no longer
        # accepts: token -> Graph error subcode (463 expired, 460 password changed...).
        self.tokens: dict[str, str] = {}
        self.dead_tokens: dict[str, int] = {}
        # page -> (n, subcode): the page's token dies after n accepted calls (mid-crawl).
        self.expire_after: dict[str, tuple[int, int]] = {}
        self.accepted: dict[str, int] = {}
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        app = web.Application()
        app.router.add_get("/_expected/{page}", self._expected)
        app.router.add_post("/_faults", self._set_faults)
        app.router.add_get("/_calls", self._calls)
        app.router.add_post("/_tokens/{page}", self._set_token)
        app.router.add_get("/{version}/{node}/{edge}", self._edge)
        app.router.add_get("/{version}/{node}", self._profile)
        self.app = app

    def token(self, page_id: str) -> str:
        """Return the token the fake accepts for ``page_id`` now."""
        return self.tokens.get(page_id, token_for(page_id))

    def expire_token(self, page_id: str, subcode: int = 463) -> None:
        """Make the current token of ``page_id`` fail with code 190 / ``subcode``."""
        self.dead_tokens[self.token(page_id)] = subcode

    def rotate_token(self, page_id: str, new: str) -> None:
        """Accept ``new`` as the token of ``page_id`` from now on."""
        self.tokens[page_id] = new

    async def _set_token(self, request: web.Request) -> web.Response:
        # {"expire": subcode} or {"token": "..."} (the demo's way to expire and rotate)
        body = orjson.loads(await request.read())
        page = request.match_info["page"]
        if "expire" in body:
            self.expire_token(page, int(body["expire"]))
        if "token" in body:
            self.rotate_token(page, str(body["token"]))
        return web.Response(status=204)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0 = any free port); return the versioned base URL."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        self.base_url = f"http://{host}:{bound}/{API_VERSION}"
        return self.base_url

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- handlers --------------------------------------------------------------------

    async def _expected(self, request: web.Request) -> web.Response:
        page = request.match_info["page"]
        if page not in self.world.conversations:
            raise web.HTTPNotFound
        return web.json_response(
            self.world.expected(page), dumps=lambda v: orjson.dumps(v).decode()
        )

    async def _set_faults(self, request: web.Request) -> web.Response:
        values = await request.json()
        for key, value in values.items():
            if not hasattr(self.world.faults, key):
                raise web.HTTPBadRequest(text=f"unknown fault {key}")
            setattr(self.world.faults, key, value)
        return web.json_response({"ok": True})

    async def _calls(self, request: web.Request) -> web.Response:
        out: dict[str, Any] = {
            p: {"calls": c.calls, "throttled": c.throttled, "served": c.served}
            for p, c in self.world.calls.items()
        }
        app = self.world.app_calls
        out["_app"] = {"served": app.served, "throttled": app.throttled}
        return web.json_response(out)

    def _check_proof(self, request: web.Request, token: str) -> web.Response | None:
        """Return Meta's error for a missing or wrong ``appsecret_proof`` (None: fine)."""
        if self.app_secret is None:
            return None
        self.proofs_checked += 1
        proof = request.query.get("appsecret_proof")
        if not proof:
            return graph_error(
                400, 100, "API calls from the server require an appsecret_proof argument"
            )
        want = hmac.new(self.app_secret.encode(), token.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(proof.encode(), want.encode()):
            return graph_error(400, 100, "Invalid appsecret_proof provided in the API argument")
        return None

    def _admit(self, page_id: str) -> web.Response | dict[str, str]:
        """Apply faults and rate limits to one call (:func:`graph_faults.admit`)."""
        w = self.world
        return admit(w.faults, w.calls, w.app_calls, page_id, self.clock())

    async def _profile(self, request: web.Request) -> web.Response:
        """GET /{user id}?fields=...: the User Profile API, the fields asked for only."""
        node = request.match_info["node"]
        self.world.profile_calls[node] = self.world.profile_calls.get(node, 0) + 1
        found = self.world.profile(node)
        if found is None:
            return graph_error(400, 100, f"Unsupported get request. Object {node} does not exist")
        page_id, fields = found
        refused = self._token_refusal(request, page_id)
        if refused is not None:
            return refused
        admitted = self._admit(page_id)
        if isinstance(admitted, web.Response):
            return admitted
        if node in self.world.faults.denied_profiles:
            return graph_error(
                400, 230, "(#230) Requires pages_messaging permission to manage the object"
            )
        asked = [f for f in request.query.get("fields", "").split(",") if f]
        body: dict[str, Any] = {k: fields[k] for k in asked if k in fields}
        body["id"] = node
        return web.Response(
            body=orjson.dumps(body), content_type="application/json", headers=admitted
        )

    def _token_refusal(self, request: web.Request, page_id: str) -> web.Response | None:
        """Return Graph's answer to a call with an expired, wrong or unproven token of
        ``page_id``; None when the token is the page's current one."""
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ")
        dead = self.dead_tokens.get(sent)
        if dead is not None:
            expired = {
                "error": {
                    "message": "Error validating access token: Session has expired",
                    "type": "OAuthException",
                    "code": 190,
                    "error_subcode": dead,
                }
            }
            return web.Response(
                status=400, body=orjson.dumps(expired), content_type="application/json"
            )
        if sent != self.token(page_id):
            return graph_error(400, 190, "Invalid OAuth access token - Cannot parse access token")
        return self._check_proof(request, self.token(page_id))

    async def _edge(self, request: web.Request) -> web.Response:
        node, edge = request.match_info["node"], request.match_info["edge"]
        if edge == "conversations":
            page_id = node
            if page_id not in self.world.conversations:
                return graph_error(
                    400, 100, f"Unsupported get request. Object {node} does not exist"
                )
            platform = request.query.get("platform")
            if platform not in ("messenger", "instagram"):
                return graph_error(400, 100, "platform=messenger or platform=instagram is required")
            if platform == "instagram" and page_id not in self.world.linked:
                return graph_error(400, 100, f"Page {node} has no linked Instagram account")
        elif edge == "messages":
            conv = self.world.thread(node)
            if conv is None:
                return graph_error(
                    400, 100, f"Unsupported get request. Object {node} does not exist"
                )
            page_id = self.world.token_page(conv)
            failing = self.world.faults.failing_threads.get(node)
            if failing is not None:
                st = self.world.calls.setdefault(page_id, PageCalls())
                st.calls += 1
                if failing == "permanent":
                    return graph_error(
                        400, 100, f"(#100) Object {node} cannot be read (failing_threads)"
                    )
                return graph_error(500, 2, "Service temporarily unavailable (failing_threads)")
        else:
            return graph_error(400, 100, f"Unknown path components: /{edge}")
        planned = self.expire_after.get(page_id)
        if planned is not None and self.accepted.get(page_id, 0) >= planned[0]:
            del self.expire_after[page_id]
            self.expire_token(page_id, planned[1])
        refused = self._token_refusal(request, page_id)
        if refused is not None:
            return refused
        self.accepted[page_id] = self.accepted.get(page_id, 0) + 1
        admitted = self._admit(page_id)
        if isinstance(admitted, web.Response):
            return admitted
        try:
            limit = int(request.query.get("limit", "25"))
        except ValueError:
            return graph_error(400, 100, "(#100) limit must be an integer")
        start = _uncursor(request.query.get("after"))
        if self.world.faults.short_pages:
            # Pages shorter than asked for that still have a next link.
            limit = 1 + start % max(1, limit)
        if edge == "conversations":
            items = self.world.conversations[page_id]
            if request.query.get("platform") == "instagram":
                items = self.world.instagram[self.world.linked[page_id]]
            cap = self.conversations_cap
            limit = max(1, min(limit, cap))
            data = [self.world.conversation_json(c) for c in items[start : start + limit]]
        else:
            assert conv is not None
            cap = self.messages_cap
            limit = max(1, min(limit, cap))
            end = min(start + limit, len(conv.messages))
            data = [self.world.message_json(conv, i) for i in range(start, end)]
            items = conv.messages  # type: ignore[assignment]
        body: dict[str, Any] = {"data": data}
        if data:
            paging: dict[str, Any] = {
                "cursors": {"before": _cursor(start), "after": _cursor(start + len(data))}
            }
            if start + len(data) < len(items):
                query = dict(request.query)
                query["after"] = _cursor(start + len(data))
                nxt = request.url.with_query(query)
                foreign = self.world.faults.foreign_next.get(node)
                if foreign is not None and start >= self.world.faults.foreign_next_from:
                    nxt = URL(f"{foreign.rstrip('/')}/{node}/{edge}").with_query(query)
                paging["next"] = str(nxt)
            body["paging"] = paging
        st = self.world.calls[page_id]
        if (
            self.world.faults.broken_json_every
            and st.served % self.world.faults.broken_json_every == 0
        ):
            return web.Response(
                body=orjson.dumps(body)[:40], content_type="application/json", headers=admitted
            )
        return web.Response(
            body=orjson.dumps(body), content_type="application/json", headers=admitted
        )


async def serve_forever(world: GraphWorld, *, host: str = "127.0.0.1", port: int = 0) -> None:
    """Run a fake Graph API until cancelled (for the demo and subprocess tests)."""
    server = GraphApiServer(world)
    url = await server.start(host, port)
    print(url, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
