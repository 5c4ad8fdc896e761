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
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from aiohttp import web
from yarl import URL

from deploy.simulator.media import cdn_url

API_VERSION: Final = "v21.0"
BASE_MS: Final = 1_700_000_000_000
THROTTLE_CODES: Final = (4, 17, 32, 613, 80006)


def token_for(page_id: str) -> str:
    """Return the fake's access token of ``page_id``."""
    return f"tok-{page_id}"


def graph_time(ms: int) -> str:
    """Return ``ms`` in the Graph API's ``created_time`` format (second precision)."""
    # time.gmtime gives the text datetime.fromtimestamp(..., UTC).strftime gives, cheaper.
    return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(ms // 1000))


@dataclass(frozen=True, slots=True)
class FakeMessage:
    """One message of a thread as the fake stores it."""

    mid: str
    created_ms: int
    from_page: bool
    text: str | None
    malformed: bool = False


@dataclass(slots=True)
class FakeConversation:
    """One thread; ``messages`` are newest first, like the Graph API returns them."""

    thread_id: str
    page_id: str  # an Instagram conversation's: the account id
    psid: str | None
    messages: list[FakeMessage]
    instagram: bool = False

    @property
    def updated_ms(self) -> int:
        """Return the time of the newest message."""
        return self.messages[0].created_ms if self.messages else BASE_MS


@dataclass(slots=True)
class Faults:
    """Switchable faults; counters are per page so runs are reproducible."""

    error_5xx_every: int = 0
    broken_json_every: int = 0
    throttle_every: int = 0
    regain_minutes: float = 0.01
    rate_per_page: float | None = None
    permanent_code: int | None = None
    details_limit: int | None = None
    short_pages: bool = False
    # node id (page or thread) -> another base URL: the paging.next of that node's list
    # points there (same path and query) from the page starting at foreign_next_from.
    foreign_next: dict[str, str] = field(default_factory=dict)
    foreign_next_from: int = 0
    # An app-wide budget (every page's calls): a bucket of app_budget calls refilled at
    # app_rate per second. Its use is reported in X-App-Usage; a call finding it empty
    # is refused with code 4 ("Application request limit reached").
    app_budget: int | None = None
    app_rate: float = 1.0
    # Every call of a page after its first fail_after_calls answers 500 (a Meta outage
    # that outlasts the crawler's retries: the crawl fails partway and must resume).
    fail_after_calls: int | None = None
    # thread id -> "permanent" (code 100, as for a conversation Meta cannot read) or
    # "transient" (500 every time): the messages of that one conversation keep failing.
    failing_threads: dict[str, str] = field(default_factory=dict)
    # Users whose User Profile API answer is a permission error (code 230, like a user
    # Meta will not describe to this app); their calls are counted all the same.
    denied_profiles: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _AppCalls:
    """The app-wide budget's bucket and what it refused."""

    tokens: float = 0.0
    last_refill: float | None = None
    served: int = 0
    throttled: int = 0
    peak_percent: float = 0.0


@dataclass(slots=True)
class _PageCalls:
    calls: int = 0
    blocked_until: float = 0.0
    tokens: float = 0.0
    last_refill: float = 0.0
    throttled: int = 0
    served: int = 0


@dataclass
class GraphWorld:
    """The fake's data: pages -> conversations (newest updated first), all seeded."""

    conversations: dict[str, list[FakeConversation]]
    faults: Faults = field(default_factory=Faults)
    calls: dict[str, _PageCalls] = field(default_factory=dict)
    app_calls: _AppCalls = field(default_factory=_AppCalls)
    # Base URL of a deploy.simulator.media server: attachments then carry URLs there.
    media_base: str | None = None
    # Instagram: account id -> its conversations (newest updated first), and the page
    # each account is linked to (page id -> account id).
    instagram: dict[str, list[FakeConversation]] = field(default_factory=dict)
    linked: dict[str, str] = field(default_factory=dict)
    _ig_threads: dict[str, FakeConversation] = field(default_factory=dict)
    # User Profile API answers beyond the threads' users (e.g. users seen only through
    # webhooks): user id -> (page id, fields); see add_profile and profile_json.
    profiles: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)
    # User Profile API calls per user id (refused ones too).
    profile_calls: dict[str, int] = field(default_factory=dict)

    @classmethod
    def generate(
        cls,
        *,
        seed: int,
        pages: int = 1,
        conversations: int = 20,
        max_messages: int = 8,
        long_threads: int = 0,
        long_thread_messages: int = 45,
        no_user: int = 0,
        malformed: int = 0,
        textless_ratio: float = 0.1,
        faults: Faults | None = None,
    ) -> GraphWorld:
        """Return a world of ``pages`` pages with ``conversations`` threads each.

        ``long_threads`` threads get ``long_thread_messages`` messages (to cross the
        details limit and several message pages); ``no_user`` threads have only the page
        as participant; ``malformed`` messages carry an unparseable ``created_time``.
        """
        rng = random.Random(seed)  # noqa: S311 - seeded test data, not secrets
        world: dict[str, list[FakeConversation]] = {}
        for p in range(pages):
            page_id = f"{100000 + seed % 1000 * 100 + p}"
            convs = []
            t = BASE_MS
            for c in range(conversations):
                n = long_thread_messages if c < long_threads else rng.randint(1, max_messages)
                msgs = []
                for m in range(n):
                    t += rng.randint(1, 5) * 1000
                    text = None if rng.random() < textless_ratio else f"hello {p}.{c}.{m}"
                    msgs.append(FakeMessage(f"m_{page_id}_{c}_{m}", t, rng.random() < 0.3, text))
                msgs.reverse()
                psid = None if c >= conversations - no_user else f"{9000000 + p * 100000 + c}"
                convs.append(FakeConversation(f"t_{page_id}_{c}", page_id, psid, msgs))
            for i in range(malformed):
                conv = convs[(i * 7) % len(convs)]
                if conv.psid is not None:
                    old = conv.messages[0]
                    conv.messages[0] = FakeMessage(
                        old.mid, old.created_ms, old.from_page, old.text, malformed=True
                    )
            rng.shuffle(convs)
            convs.sort(key=lambda cv: cv.updated_ms, reverse=True)
            world[page_id] = convs
        return cls(world, faults or Faults())

    @property
    def page_ids(self) -> list[str]:
        """Return the page ids."""
        return list(self.conversations)

    def link_instagram(
        self, page_id: str, account_id: str, conversations: list[FakeConversation]
    ) -> None:
        """Link the Instagram account ``account_id`` with its inbox to ``page_id``."""
        if page_id not in self.conversations:
            raise KeyError(page_id)
        self.linked[page_id] = account_id
        self.instagram[account_id] = sorted(conversations, key=lambda c: -c.updated_ms)
        self._ig_threads.update((c.thread_id, c) for c in conversations)

    def token_page(self, conv: FakeConversation) -> str:
        """Return the page whose token reads ``conv`` (an Instagram account's linked page)."""
        if not conv.instagram:
            return conv.page_id
        return next(p for p, a in self.linked.items() if a == conv.page_id)

    def thread(self, thread_id: str) -> FakeConversation | None:
        """Return the conversation ``thread_id``."""
        if thread_id in self._ig_threads:
            return self._ig_threads[thread_id]
        page_id = thread_id.split("_")[1] if thread_id.startswith("t_") else ""
        for conv in self.conversations.get(page_id, []):
            if conv.thread_id == thread_id:
                return conv
        return None

    def add_message(self, thread_id: str, *, text: str, from_page: bool = False) -> FakeMessage:
        """Append a new newest message to a thread (for incremental crawls); return it."""
        conv = self.thread(thread_id)
        if conv is None:
            raise KeyError(thread_id)
        pool = (self.instagram if conv.instagram else self.conversations)[conv.page_id]
        newest = max(cv.updated_ms for cv in pool)
        at = max(int(time.time() * 1000), newest + 1000)
        msg = FakeMessage(f"m_{thread_id}_n{len(conv.messages)}", at, from_page, text)
        conv.messages.insert(0, msg)
        pool.sort(key=lambda cv: cv.updated_ms, reverse=True)
        return msg

    def add_profile(self, page_id: str, user_id: str, **fields: str) -> None:
        """Give the User Profile API an answer about ``user_id`` for ``page_id``'s token
        (Messenger: ``first_name``, ``last_name``, ``profile_pic``; Instagram: ``name``,
        ``username``, ``profile_pic``)."""
        self.profiles[user_id] = (page_id, dict(fields))

    def profile(self, user_id: str) -> tuple[str, dict[str, str]] | None:
        """Return (page id, fields) of ``user_id``: an added profile, else the thread
        user's default one (``User`` and the id, as the participants name them)."""
        if user_id in self.profiles:
            return self.profiles[user_id]
        for page_id, convs in self.conversations.items():
            for conv in convs:
                if conv.psid == user_id:
                    return page_id, {
                        "first_name": "User",
                        "last_name": user_id,
                        "profile_pic": f"https://platform-lookaside.fbsbx.com/p/{user_id}.jpg",
                    }
        return None

    def detailed(self, index: int) -> bool:
        """Return whether the ``index``-th newest message of a thread has details."""
        limit = self.faults.details_limit
        return limit is None or index < limit

    def expected(self, page_id: str) -> dict[str, Any]:
        """Return the truth for a full crawl of ``page_id``.

        ``messages`` is a list of ``[page, psid, mid, text, direction]`` (text and
        direction ``None`` when the message has no details); ``skipped`` counts reasons.
        """
        rows: list[list[str | None]] = []
        skipped: dict[str, int] = {}
        convs = self.instagram.get(page_id) or self.conversations[page_id]
        for conv in convs:
            if conv.psid is None:
                skipped["no_user_participant"] = skipped.get("no_user_participant", 0) + 1
                continue
            for i, m in enumerate(conv.messages):
                if m.malformed:
                    skipped["invalid_message"] = skipped.get("invalid_message", 0) + 1
                    continue
                if self.detailed(i):
                    direction = "outbound" if m.from_page else "inbound"
                    rows.append([page_id, conv.psid, m.mid, m.text, direction])
                else:
                    rows.append([page_id, conv.psid, m.mid, None, None])
        return {
            "messages": rows,
            "conversations": sum(1 for c in convs if c.psid),
            "skipped": skipped,
        }

    # -- JSON bodies -----------------------------------------------------------------

    def conversation_json(self, conv: FakeConversation) -> dict[str, Any]:
        """Return a conversation as the Graph API lists it."""
        people = [_person(conv, conv.page_id)]
        if conv.psid is not None:
            people.insert(0, _person(conv, conv.psid))
        return {
            "id": conv.thread_id,
            "updated_time": graph_time(conv.updated_ms),
            "message_count": len(conv.messages),
            "participants": {"data": people},
        }

    def message_json(self, conv: FakeConversation, index: int) -> dict[str, Any]:
        """Return the ``index``-th newest message of ``conv`` as the Graph API lists it."""
        m = conv.messages[index]
        created = "not-a-time" if m.malformed else graph_time(m.created_ms)
        if not self.detailed(index):
            return {"id": m.mid, "created_time": created}
        user = _person(conv, conv.psid or "0")
        page = _person(conv, conv.page_id)
        sender, receiver = (page, user) if m.from_page else (user, page)
        body: dict[str, Any] = {
            "id": m.mid,
            "created_time": created,
            "from": sender,
            "to": {"data": [receiver]},
        }
        if m.text is not None:
            body["message"] = m.text
        elif conv.instagram:
            # A shared post: Graph gives its media URL in shares, the text is empty.
            body["message"] = ""
            body["shares"] = {"data": [{"link": f"https://cdn.invalid/ig/{m.mid}.jpg"}]}
        else:
            body["message"] = ""
            attachment: dict[str, Any] = {
                "id": f"a_{m.mid}",
                "mime_type": "image/jpeg",
                "name": "photo.jpg",
            }
            if self.media_base is not None:
                attachment.update(self.media_json(m.mid))
            body["attachments"] = {"data": [attachment]}
        return body

    def media_json(self, mid: str) -> dict[str, Any]:
        """Return the fields of a message attachment with a URL on the media server,
        shaped like Graph's (``image_data``, ``video_data`` or ``file_url``), chosen
        from the message id: mostly files, some shared content, missing and expired."""
        assert self.media_base is not None
        h = int.from_bytes(hashlib.sha256(mid.encode()).digest()[:4], "big")
        behaviour = {0: "missing", 1: "expired", 2: "same-1"}.get(h % 20, "ok")
        if h % 7 == 3:
            url = cdn_url(self.media_base, f"{behaviour}-{mid}.mp4")
            return {"mime_type": "video/mp4", "name": "video.mp4", "video_data": {"url": url}}
        if h % 11 == 4:
            url = cdn_url(self.media_base, f"{behaviour}-{mid}.pdf")
            return {"mime_type": "application/pdf", "name": "file.pdf", "file_url": url}
        url = cdn_url(self.media_base, f"{behaviour}-{mid}.jpg")
        return {"image_data": {"url": url, "width": 640, "height": 480}}


def _person(conv: FakeConversation, who: str) -> dict[str, str]:
    """Return a participant: Messenger gives a name, Instagram a username."""
    if conv.instagram:
        return {"username": f"ig_{who}", "id": who}
    kind = "Page" if who == conv.page_id else "User"
    return {"id": who, "name": f"{kind} {who}"}


def _cursor(index: int) -> str:
    return base64.urlsafe_b64encode(f"i:{index}".encode()).decode()


def _uncursor(value: str | None) -> int:
    if not value:
        return 0
    try:
        return int(base64.urlsafe_b64decode(value.encode()).decode().split(":", 1)[1])
    except (ValueError, IndexError) as e:
        raise web.HTTPBadRequest(text='{"error":{"code":100,"message":"bad cursor"}}') from e


def _error(status: int, code: int, message: str, **headers: str) -> web.Response:
    body = {"error": {"message": message, "type": "OAuthException", "code": code}}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


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
            return _error(400, 100, "API calls from the server require an appsecret_proof argument")
        want = hmac.new(self.app_secret.encode(), token.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(proof.encode(), want.encode()):
            return _error(400, 100, "Invalid appsecret_proof provided in the API argument")
        return None

    def _usage_headers(
        self, page_id: str, pct: int, regain_minutes: float, *, app_pct: int | None = None
    ) -> dict[str, str]:
        a = pct if app_pct is None else app_pct
        app: dict[str, Any] = {"call_count": a, "total_cputime": a // 2, "total_time": a // 2}
        if app_pct is not None and app_pct >= 100:
            app["estimated_time_to_regain_access"] = regain_minutes
        buc = {
            page_id: [
                {
                    "type": "messenger",
                    "call_count": pct,
                    "total_cputime": pct // 2,
                    "total_time": pct // 2,
                    "estimated_time_to_regain_access": regain_minutes,
                }
            ]
        }
        return {
            "X-App-Usage": orjson.dumps(app).decode(),
            "X-Business-Use-Case-Usage": orjson.dumps(buc).decode(),
        }

    def _admit(self, page_id: str) -> web.Response | dict[str, str]:
        """Apply faults and rate limits to one call; return an error or usage headers."""
        faults = self.world.faults
        st = self.world.calls.setdefault(page_id, _PageCalls())
        st.calls += 1
        now = self.clock()
        if faults.permanent_code is not None:
            return _error(400, faults.permanent_code, f"(#{faults.permanent_code}) permanent fault")
        if faults.fail_after_calls is not None and st.calls > faults.fail_after_calls:
            return _error(500, 2, "Service temporarily unavailable (fail_after_calls)")
        app_pct = self._app_admit(now)
        if isinstance(app_pct, web.Response):
            st.throttled += 1
            return app_pct
        if now < st.blocked_until:
            st.throttled += 1
            regain = (st.blocked_until - now) / 60
            return _error(
                400,
                613,
                "Calls to this api have exceeded the rate limit.",
                **self._usage_headers(page_id, 100, regain),
            )
        if faults.throttle_every and st.calls % faults.throttle_every == 0:
            st.throttled += 1
            st.blocked_until = now + faults.regain_minutes * 60
            code = THROTTLE_CODES[(st.calls // faults.throttle_every) % len(THROTTLE_CODES)]
            return _error(
                400,
                code,
                "Application request limit reached",
                **self._usage_headers(page_id, 100, faults.regain_minutes),
            )
        pct = 10
        if faults.rate_per_page:
            rate = faults.rate_per_page
            if st.last_refill == 0.0:
                st.tokens, st.last_refill = rate, now
            st.tokens = min(rate, st.tokens + (now - st.last_refill) * rate)
            st.last_refill = now
            if st.tokens < 1.0:
                st.throttled += 1
                regain = (1.0 - st.tokens) / rate / 60
                return _error(
                    400,
                    80006,
                    "There have been too many messenger api calls to this page.",
                    **self._usage_headers(page_id, 100, regain),
                )
            st.tokens -= 1.0
            pct = int(100 * (1 - st.tokens / rate))
        if faults.error_5xx_every and st.calls % faults.error_5xx_every == 0:
            if (st.calls // faults.error_5xx_every) % 2:
                return _error(500, 2, "Service temporarily unavailable")
            return web.Response(status=503, text="upstream unavailable")
        st.served += 1
        return self._usage_headers(page_id, pct, 0, app_pct=app_pct)

    def _app_admit(self, now: float) -> web.Response | int | None:
        """Take one call from the app-wide budget; return its use in percent (None: no
        budget) or the error refusing the call."""
        faults, app = self.world.faults, self.world.app_calls
        if not faults.app_budget:
            return None
        budget, rate = faults.app_budget, faults.app_rate
        if app.last_refill is None:
            app.tokens, app.last_refill = float(budget), now
        app.tokens = min(float(budget), app.tokens + (now - app.last_refill) * rate)
        app.last_refill = now
        if app.tokens < 1.0:
            app.throttled += 1
            regain = (1.0 - app.tokens) / rate / 60
            return _error(
                400,
                4,
                "(#4) Application request limit reached",
                **self._usage_headers("app", 100, regain, app_pct=100),
            )
        app.tokens -= 1.0
        app.served += 1
        pct = 100 * (1 - app.tokens / budget)
        app.peak_percent = max(app.peak_percent, pct)
        return int(pct)

    async def _profile(self, request: web.Request) -> web.Response:
        """GET /{user id}?fields=...: the User Profile API, the fields asked for only."""
        node = request.match_info["node"]
        self.world.profile_calls[node] = self.world.profile_calls.get(node, 0) + 1
        found = self.world.profile(node)
        if found is None:
            return _error(400, 100, f"Unsupported get request. Object {node} does not exist")
        page_id, fields = found
        if request.headers.get("Authorization") != f"Bearer {token_for(page_id)}":
            return _error(400, 190, "Invalid OAuth access token - Cannot parse access token")
        refused = self._check_proof(request, token_for(page_id))
        if refused is not None:
            return refused
        admitted = self._admit(page_id)
        if isinstance(admitted, web.Response):
            return admitted
        if node in self.world.faults.denied_profiles:
            return _error(
                400, 230, "(#230) Requires pages_messaging permission to manage the object"
            )
        asked = [f for f in request.query.get("fields", "").split(",") if f]
        body: dict[str, Any] = {k: fields[k] for k in asked if k in fields}
        body["id"] = node
        return web.Response(
            body=orjson.dumps(body), content_type="application/json", headers=admitted
        )

    async def _edge(self, request: web.Request) -> web.Response:
        node, edge = request.match_info["node"], request.match_info["edge"]
        if edge == "conversations":
            page_id = node
            if page_id not in self.world.conversations:
                return _error(400, 100, f"Unsupported get request. Object {node} does not exist")
            platform = request.query.get("platform")
            if platform not in ("messenger", "instagram"):
                return _error(400, 100, "platform=messenger or platform=instagram is required")
            if platform == "instagram" and page_id not in self.world.linked:
                return _error(400, 100, f"Page {node} has no linked Instagram account")
        elif edge == "messages":
            conv = self.world.thread(node)
            if conv is None:
                return _error(400, 100, f"Unsupported get request. Object {node} does not exist")
            page_id = self.world.token_page(conv)
            failing = self.world.faults.failing_threads.get(node)
            if failing is not None:
                st = self.world.calls.setdefault(page_id, _PageCalls())
                st.calls += 1
                if failing == "permanent":
                    return _error(
                        400, 100, f"(#100) Object {node} cannot be read (failing_threads)"
                    )
                return _error(500, 2, "Service temporarily unavailable (failing_threads)")
        else:
            return _error(400, 100, f"Unknown path components: /{edge}")
        planned = self.expire_after.get(page_id)
        if planned is not None and self.accepted.get(page_id, 0) >= planned[0]:
            del self.expire_after[page_id]
            self.expire_token(page_id, planned[1])
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
            return _error(400, 190, "Invalid OAuth access token - Cannot parse access token")
        refused = self._check_proof(request, self.token(page_id))
        if refused is not None:
            return refused
        self.accepted[page_id] = self.accepted.get(page_id, 0) + 1
        admitted = self._admit(page_id)
        if isinstance(admitted, web.Response):
            return admitted
        try:
            limit = int(request.query.get("limit", "25"))
        except ValueError:
            return _error(400, 100, "(#100) limit must be an integer")
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
