"""Login attempts per client address: a token bucket each, in a map of fixed size.

Written here rather than taken from a library: the rate-limit packages at hand (``limits``,
``aiolimiter``) either keep a key per client until a timer expires it, which a flood of
addresses grows without bound, or limit one resource rather than many keys. This is an
``OrderedDict`` used as an LRU map: past ``clients`` entries the least recently seen
client is forgotten (it starts again with a full bucket, as a new client would).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable


class LoginLimiter:
    """``burst`` attempts at once per client, then ``per_minute``; at most ``clients`` kept."""

    def __init__(
        self,
        *,
        burst: int,
        per_minute: float,
        clients: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or per_minute <= 0 or clients < 1:
            raise ValueError("burst, per_minute and clients must be positive")
        self.burst = float(burst)
        self.rate = per_minute / 60.0
        self.clients = clients
        self._clock = clock
        # client -> (tokens left, when they were counted)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def attempt(self, client: str) -> float:
        """Count one attempt of ``client``; return 0 if allowed, else seconds to wait."""
        now = self._clock()
        tokens, then = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.clients:
            self._buckets.popitem(last=False)
        return wait

    @staticmethod
    def retry_after(wait: float) -> str:
        """Return the ``Retry-After`` header value for ``wait`` seconds (whole, at least 1)."""
        return str(max(1, math.ceil(wait)))
