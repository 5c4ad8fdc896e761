"""Slow clients for the deadline tests: connections trickling a request one byte a second,
and a webhook load that measures every answer's latency."""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
import uvloop

from deploy.simulator.webhooks import SignedBody


@dataclass(frozen=True, slots=True)
class Trickle:
    """A kind of slow request: ``head`` at once, then ``drip`` one byte per ``every`` s."""

    name: str
    port: int
    head: bytes
    drip: bytes = b"x"
    every: float = 1.0


def header_trickle(name: str, port: int, path: bytes = b"/webhook") -> Trickle:
    """A request whose headers never end: a header value grows by a byte a second."""
    return Trickle(name, port, b"POST " + path + b" HTTP/1.1\r\nHost: slow\r\nX-Slow: ", b"abc")


def body_trickle(name: str, port: int, path: bytes, content_type: bytes) -> Trickle:
    """A request with complete headers whose announced 100 kB body comes a byte a second."""
    head = (
        b"POST " + path + b" HTTP/1.1\r\nHost: slow\r\nContent-Type: " + content_type + b"\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    return Trickle(name, port, head)


@dataclass(slots=True)
class Ended:
    """How one trickling connection ended, ``seconds`` after it was opened."""

    kind: str
    seconds: float
    how: str  # "closed" (no answer), the answer's status line, or "still open"


@dataclass
class Slowloris:
    """``per_kind`` connections of every trickle kind, each opened again once closed."""

    kinds: Sequence[Trickle]
    per_kind: int
    host: str = "127.0.0.1"
    ended: list[Ended] = field(default_factory=list)
    opened: Counter[str] = field(default_factory=Counter)

    async def run(self, seconds: float) -> None:
        """Trickle for ``seconds`` (connections are started over the first second)."""
        until = time.monotonic() + seconds
        tasks = [
            asyncio.create_task(self._keep(kind, until, i / self.per_kind))
            for kind in self.kinds
            for i in range(self.per_kind)
        ]
        await asyncio.gather(*tasks)

    async def _keep(self, kind: Trickle, until: float, delay: float) -> None:
        await asyncio.sleep(delay)
        while time.monotonic() < until - 0.5:
            self.ended.append(await self._one(kind, until))

    async def _one(self, kind: Trickle, until: float) -> Ended:
        reader, writer = await asyncio.open_connection(self.host, kind.port)
        self.opened[kind.name] += 1
        began = time.monotonic()
        try:
            writer.write(kind.head)
            sent = 0
            while True:
                left = until - time.monotonic()
                if left <= 0:
                    return Ended(kind.name, time.monotonic() - began, "still open")
                try:
                    data = await asyncio.wait_for(reader.read(4096), min(kind.every, left))
                except TimeoutError:
                    writer.write(kind.drip[sent % len(kind.drip) : sent % len(kind.drip) + 1])
                    sent += 1
                    continue
                if not data:
                    return Ended(kind.name, time.monotonic() - began, "closed")
                status = data.split(b"\r\n", 1)[0].decode(errors="replace")
                # An answer: the time that counts is when the server closes, next.
                while data:
                    left = until - time.monotonic()
                    if left <= 0:
                        return Ended(kind.name, time.monotonic() - began, f"{status}, left open")
                    try:
                        data = await asyncio.wait_for(reader.read(4096), min(kind.every, left))
                    except TimeoutError:
                        writer.write(kind.drip[:1])
                return Ended(kind.name, time.monotonic() - began, status)
        except (ConnectionError, OSError):
            return Ended(kind.name, time.monotonic() - began, "closed")
        finally:
            writer.close()

    def summary(self) -> dict[str, dict[str, object]]:
        """Per kind: connections opened, how they ended, the longest any stayed open."""
        out: dict[str, dict[str, object]] = {}
        for kind in self.kinds:
            mine = [e for e in self.ended if e.kind == kind.name]
            out[kind.name] = {
                "connections": self.opened[kind.name],
                "ended": dict(Counter(e.how for e in mine)),
                "longest open (s)": round(max((e.seconds for e in mine), default=0.0), 2),
            }
        return out


def _trickle_for(slow: Slowloris, seconds: float) -> Slowloris:
    uvloop.run(slow.run(seconds))
    return slow


def in_a_process(slow: Slowloris, seconds: float) -> concurrent.futures.Future[Slowloris]:
    """Run ``slow`` for ``seconds`` in a process of its own; the future holds its results.

    Its own process, so that the 300 trickling connections do not share an event loop
    (or the interpreter lock) with the client measuring the webhooks' latency.
    """
    pool = concurrent.futures.ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn")
    )
    future = pool.submit(_trickle_for, slow, seconds)
    pool.shutdown(wait=False)
    return future


@dataclass
class TimedLoad:
    """Posts signed bodies at ``rate``/s from ``clients`` keep-alive connections."""

    url: str
    bodies: Sequence[SignedBody]
    rate: float
    clients: int = 4
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)

    async def run(self) -> None:
        """Post every body once (its scheduled time is ``i / rate`` from the start)."""
        started = time.monotonic()
        queue: asyncio.Queue[tuple[int, SignedBody]] = asyncio.Queue()
        for item in enumerate(self.bodies):
            queue.put_nowait(item)
        timeout = aiohttp.ClientTimeout(total=30)
        connector = aiohttp.TCPConnector(limit=self.clients)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

            async def client() -> None:
                while not queue.empty():
                    i, body = queue.get_nowait()
                    delay = started + i / self.rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    t = time.monotonic()
                    async with session.post(self.url, data=body.raw, headers=body.headers) as r:
                        await r.read()
                    self.latencies.append(time.monotonic() - t)
                    self.statuses[r.status] += 1

            await asyncio.gather(*(client() for _ in range(self.clients)))

    def percentile(self, p: int) -> float:
        """Return the ``p``-th percentile of the latencies, in seconds."""
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[p - 1]
