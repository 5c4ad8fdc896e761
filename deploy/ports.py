"""Free TCP ports for servers started by tests, the demo and benchmarks.

A port the kernel hands out for ``bind(0)`` comes from the ephemeral range, the same
range outgoing connections take their local ports from. A server that binds seconds
after the port was chosen (a Kafka broker binds its listener only once the controller
quorum has formed) can find it taken by some client socket meanwhile: seen once in CI
as "Socket server failed to bind ... Address already in use". So ports are picked
below (or above) that range, where no outgoing connection lands.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Sequence
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000


def ephemeral_range() -> tuple[int, int]:
    """Return the kernel's ephemeral port range (Linux's default when unreadable)."""
    try:
        low, high = (int(v) for v in _RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32_768, 60_999
    return low, high


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(
    offsets: Sequence[int] = (0,), *, attempts: int = 500, rng: random.Random | None = None
) -> int:
    """Return a port ``p`` outside the ephemeral range such that ``p + o`` is free on
    127.0.0.1 right now for every offset ``o``. Raises RuntimeError if none is found."""
    span = max(offsets)
    low, high = ephemeral_range()
    choices = [(_LOWEST, low - 1 - span), (high + 1, 65_535 - span)]
    ranges = [(a, b) for a, b in choices if b - a >= 1_000]
    if not ranges:
        raise RuntimeError(f"no port range outside the ephemeral range {low}-{high}")
    rng = rng or random.Random()  # noqa: S311 - spreading test ports, not secrets
    for _ in range(attempts):
        a, b = rng.choice(ranges)
        base = rng.randrange(a, b)
        if all(_free(base + o) for o in offsets):
            return base
    raise RuntimeError("no free ports")
