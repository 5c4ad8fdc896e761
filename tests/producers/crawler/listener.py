"""A recording HTTP listener standing for an attacker's host: it must never hear from us."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from deploy.simulator.graph_api import API_VERSION


@dataclass(frozen=True, slots=True)
class Heard:
    """One request the listener received."""

    method: str
    path_qs: str
    authorization: str | None


class RecordingListener:
    """An aiohttp server on 127.0.0.1 (a free port) in its own thread and event loop.

    It records every request and its ``Authorization`` header, and answers like a
    Graph API that has nothing more (``{"data": []}``, no next page): a crawler that
    follows a link here would then believe its listing ended. ``redirect_to`` makes it
    answer 302 to that URL instead.
    """

    def __init__(self, *, redirect_to: str | None = None) -> None:
        self.heard: list[Heard] = []
        self.redirect_to = redirect_to
        self._lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._runner: web.AppRunner | None = None
        self.port = self._call(self._start())

    @property
    def origin(self) -> str:
        """Return ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """Return a Graph-like versioned base URL on this listener."""
        return f"{self.origin}/{API_VERSION}"

    def requests(self) -> list[Heard]:
        """Return a copy of what was heard so far."""
        with self._lock:
            return list(self.heard)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def _any(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self.heard.append(
                Heard(request.method, request.path_qs, request.headers.get("Authorization"))
            )
        if self.redirect_to is not None:
            raise web.HTTPFound(self.redirect_to)
        return web.json_response({"data": []})

    def stop(self) -> None:
        """Stop serving and end the thread."""
        if self._runner is not None:
            self._call(self._runner.cleanup())
            self._runner = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
