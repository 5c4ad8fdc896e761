"""Make faust's producer buffer late, in a worker started with this directory first on
PYTHONPATH (tests/streams/test_kill.py).

faust sends a table write's changelog record with ``send_soon``: into its producer
buffer, which a background task drains. Here that task waits
``CONVSYNC_TEST_LATE_BUFFER_SECONDS`` before each record, as it does when the worker's
CPU is busy, so a write that goes through the buffer reaches Kafka after the commits
that follow it. The worker's log says the patch is on, so a test that relies on it
cannot pass without it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from faust.transport.producer import ProducerBuffer

DELAY = float(os.environ["CONVSYNC_TEST_LATE_BUFFER_SECONDS"])
_send_pending = ProducerBuffer._send_pending


async def _late(self: ProducerBuffer, fut: Any) -> None:
    await asyncio.sleep(DELAY)
    await _send_pending(self, fut)


ProducerBuffer._send_pending = _late  # type: ignore[method-assign]
print(f"late producer buffer: {DELAY} s per record", file=sys.stderr, flush=True)
