"""Ports for servers the project starts are picked outside the ephemeral range."""

from __future__ import annotations

import random
import socket
from typing import Any

from deploy.ports import ephemeral_range, free_ports


def test_free_ports_are_outside_the_ephemeral_range_and_bindable() -> None:
    low, high = ephemeral_range()
    assert 1024 <= low <= high <= 65_535
    for _ in range(50):
        base = free_ports((0, 1, 10, 11))
        for port in (base, base + 1, base + 10, base + 11):
            assert not low <= port <= high
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))


def test_a_taken_port_is_never_returned() -> None:
    base = free_ports((0,))

    class TakenFirst(random.Random):
        """Proposes the taken port first, then any other."""

        calls = 0

        def randrange(self, *args: Any, **kwargs: Any) -> int:
            self.calls += 1
            return base if self.calls == 1 else super().randrange(*args, **kwargs)

    with socket.socket() as held:
        held.bind(("127.0.0.1", base))
        held.listen()
        rng = TakenFirst(1)
        got = free_ports((0,), rng=rng)
    assert rng.calls >= 2 and got != base
