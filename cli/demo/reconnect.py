"""The demo's expired token: a page goes to ``needs_reconnect`` and back.

New messages are written into one page's simulated threads without webhooks, so only a
crawl can bring them. Then the page's token expires at the fake Meta (code 190, subcode
463) and someone asks for a sync through the admin API: the crawl is refused, the page
goes to ``needs_reconnect`` and the crawl pauses with its cursor. The token is rotated
at the fake Meta and the new one is given to convsync with ``PUT /admin/pages/{id}``, as
an operator would; nobody restarts anything. The paused crawl resumes on its own and
brings the new messages, which the truth comparison then includes.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from cli.demo.gap import crawled
from cli.demo.options import ADMIN_TOKEN, DemoOptions, WebhookTally
from cli.demo.traffic import GraphThread
from convsync.errors import ConvsyncError
from convsync.settings import Settings
from deploy.simulator.graph_api import FakeMessage


@dataclass
class Reconnect:
    """What the demo's token expiry showed."""

    page: str
    messages: list[str]  # mids only a crawl can bring (no webhook was sent)
    told: str = ""  # the page's status message while it needed a reconnect
    refused_after: float = 0.0  # seconds from the sync to needs_reconnect
    back_after: float = 0.0  # seconds from the new token to the crawl done
    stored: int = 0  # of ``messages``, stored from the resumed crawl


def admin_call(base: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """Call the admin API at ``base`` (``http://127.0.0.1:port``); return the JSON answer
    (None for 204). Raises :class:`ConvsyncError` for any answer other than 2xx."""
    if not base.startswith("http://127.0.0.1:"):
        raise ConvsyncError(f"the demo's admin API is local, not {base}")
    request = urllib.request.Request(  # noqa: S310 - a local http URL, checked above
        f"{base}/admin{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            raw = response.read()
    except urllib.error.HTTPError as e:
        raise ConvsyncError(f"admin API {method} {path}: HTTP {e.code}") from e
    return json.loads(raw) if raw else None


def _wait(what: str, timeout: float, check: Any) -> float:
    """Poll ``check`` until it returns True; return the seconds it took."""
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > timeout:
            raise ConvsyncError(f"the demo's token expiry: {what} not seen in {timeout:.0f}s")
        time.sleep(0.3)
    return time.monotonic() - began


def expire_and_reconnect(
    settings: Settings, graph: GraphThread, admin: str, opts: DemoOptions, tally: WebhookTally
) -> Reconnect:
    """Run the token expiry on the last page; see the module docstring."""
    world = graph.world
    page = world.page_ids[-1]
    server = graph.server

    async def add(i: int) -> tuple[str, FakeMessage]:
        # On the fake's own loop: a crawl may be reading these threads right now.
        conv = [c for c in world.conversations[page] if c.psid][i % 7]
        assert conv.psid is not None
        return conv.psid, world.add_message(conv.thread_id, text=f"while the token expired {i}")

    async def expire() -> None:
        server.expire_token(page, 463)

    # The token dies first: from here on only the resumed crawl can bring these.
    asyncio.run_coroutine_threadsafe(expire(), graph.loop).result(10)
    mids = []
    for i in range(opts.reconnect_messages):
        psid, msg = asyncio.run_coroutine_threadsafe(add(i), graph.loop).result(10)
        tally.truth.add((page, psid, msg.mid, f"while the token expired {i}", "inbound"))
        mids.append(msg.mid)
    out = Reconnect(page=page, messages=mids)

    crawl = admin_call(admin, "POST", f"/pages/{page}/sync", {"full": False})["crawl_id"]

    def refused() -> bool:
        view = admin_call(admin, "GET", f"/pages/{page}")
        out.told = str(view.get("status_message") or "")
        return bool(view["status"] == "needs_reconnect" and view["crawl_paused"])

    out.refused_after = _wait("needs_reconnect", opts.timeout, refused)
    new_token = secrets.token_urlsafe(24)

    async def rotate() -> None:
        server.rotate_token(page, new_token)

    asyncio.run_coroutine_threadsafe(rotate(), graph.loop).result(10)
    admin_call(admin, "PUT", f"/pages/{page}", {"access_token": new_token})

    def back() -> bool:
        if admin_call(admin, "GET", f"/pages/{page}")["status"] != "active":
            return False
        if admin_call(admin, "GET", f"/crawls/{crawl}")["status"] != "done":
            return False
        out.stored = crawled(settings, [page], mids)
        return out.stored == len(mids)

    out.back_after = _wait("the page active again and its crawl done", opts.timeout, back)
    return out
