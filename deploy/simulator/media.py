"""A fake of Meta's media CDN (aiohttp): deterministic attachment bytes per URL.

What a URL gets is written in its file name, ``/media/<behaviour>-<id>.<ext>`` (any query,
like the CDN's signature parameters, is ignored):

- ``ok``: 200 with 2-64 KiB of bytes derived from the whole name;
- ``same``: ``same-<group>-<id>``: the bytes of the group, so different URLs (different
  messages) carry identical content;
- ``slow``: 48 KiB trickled 3 KiB at a time (a download lasts ~0.7 s: time to kill it);
- ``flaky``: 503 for the first two requests of that name, then like ``ok``;
- ``missing``: 404; ``expired``: 403 with Meta's "URL signature expired" text;
- ``huge``: ``huge_bytes`` announced in Content-Length; ``hugechunked``: as many bytes,
  chunked, with no length announced;
- ``redirect``: 302 to the URL in the ``to`` query parameter.

:func:`expected_outcome` is the truth: what an archiver must end with for a URL.
``GET /_requests`` returns how often each path was asked for.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from typing import Final, Literal
from urllib.parse import urlsplit

from aiohttp import web

BEHAVIOURS: Final = (
    "ok", "same", "slow", "flaky", "missing", "expired", "huge", "hugechunked", "redirect",
)  # fmt: skip
CHUNK: Final = 3 * 1024
SLOW_BYTES: Final = 48 * 1024
SLOW_PAUSE: Final = 0.04
FLAKY_FAILURES: Final = 2
DEFAULT_HUGE: Final = 8 * 1024 * 1024
Outcome = tuple[Literal["stored"], str] | tuple[Literal["failed"], str]


def _behaviour(name: str) -> str:
    head = name.split("-", 1)[0]
    return head if head in BEHAVIOURS else "ok"


def content_key(name: str) -> str:
    """Return what the bytes of ``name`` are derived from (``same-g-x`` -> the group)."""
    if _behaviour(name) == "same":
        parts = name.split("-")
        return f"same-{parts[1]}" if len(parts) > 2 else name
    return name.rsplit(".", 1)[0]


def content_size(name: str) -> int:
    """Return the size of the bytes served for ``name``."""
    if _behaviour(name) == "slow":
        return SLOW_BYTES
    digest = hashlib.sha256(content_key(name).encode()).digest()
    return 2048 + int.from_bytes(digest[:4], "big") % (62 * 1024)


def media_bytes(name: str, size: int | None = None) -> bytes:
    """Return the bytes served for ``name`` (SHAKE-256 of its content key)."""
    return hashlib.shake_256(content_key(name).encode()).digest(size or content_size(name))


def expected_outcome(url: str, *, max_bytes: int) -> Outcome:
    """Return what archiving ``url`` must end with: stored with this sha256, or failed
    with this reason (``huge`` files are larger than ``max_bytes``)."""
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    match _behaviour(name):
        case "missing":
            return ("failed", "not_found")
        case "expired":
            return ("failed", "forbidden")
        case "huge" | "hugechunked":
            return ("failed", "too_large")
        case "redirect":
            raise ValueError("a redirect's outcome is its target's")
    data = media_bytes(name)
    if len(data) > max_bytes:
        return ("failed", "too_large")
    return ("stored", hashlib.sha256(data).hexdigest())


def cdn_url(base: str, name: str) -> str:
    """Return the URL of ``name`` under ``base``, with CDN-like signature parameters."""
    sig = hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"{base}/media/{name}?_nc_cat=1&oh=00_{sig}&oe=6A000000"


class MediaServer:
    """The fake CDN; ``start()`` binds a port and returns its base URL."""

    def __init__(self, *, huge_bytes: int = DEFAULT_HUGE) -> None:
        self.huge_bytes = huge_bytes
        self.requests: Counter[str] = Counter()
        # Responses being streamed right now (a test kills a client in the middle).
        self.streaming = 0
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        app = web.Application()
        app.router.add_get("/_requests", self._requests)
        app.router.add_get("/media/{name}", self._media)
        self.app = app

    def url(self, name: str) -> str:
        """Return the URL of ``name`` on this server."""
        return cdn_url(self.base_url, name)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0 = any free port); return the base URL."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        self.base_url = f"http://{host}:{bound}"
        return self.base_url

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _requests(self, _: web.Request) -> web.Response:
        return web.json_response(dict(self.requests))

    async def _media(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.requests[request.path] += 1
        seen = self.requests[request.path]
        match _behaviour(name):
            case "missing":
                return web.Response(status=404, text="Not Found")
            case "expired":
                return web.Response(status=403, text="URL signature expired")
            case "flaky" if seen <= FLAKY_FAILURES:
                return web.Response(status=503, text="Service Unavailable")
            case "redirect":
                raise web.HTTPFound(request.query.get("to", "/"))
            case "huge":
                return await self._stream(request, name, self.huge_bytes, announce=True)
            case "hugechunked":
                return await self._stream(request, name, self.huge_bytes, announce=False)
            case "slow":
                return await self._stream(request, name, SLOW_BYTES, pause=SLOW_PAUSE)
        return web.Response(body=media_bytes(name), content_type="application/octet-stream")

    async def _stream(
        self,
        request: web.Request,
        name: str,
        size: int,
        *,
        announce: bool = True,
        pause: float = 0.0,
    ) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "application/octet-stream"
        if announce:
            resp.content_length = size
        await resp.prepare(request)
        self.streaming += 1
        # Bytes made chunk by chunk: a huge file is never held whole (its bytes repeat
        # one 64 KiB block; a slow file's are media_bytes()).
        shake = hashlib.shake_256(content_key(name).encode())
        block = shake.digest(64 * 1024)
        sent = 0
        try:
            while sent < size:
                n = min(CHUNK if pause else len(block), size - sent)
                data = shake.digest(sent + n)[sent:] if pause else block[:n]
                await resp.write(data)
                sent += n
                if pause:
                    await asyncio.sleep(pause)
            await resp.write_eof()
        except ConnectionResetError:
            # The client stopped reading (a refused huge file, a killed archiver).
            pass
        finally:
            self.streaming -= 1
        return resp
