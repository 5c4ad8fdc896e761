"""One batch written to Postgres in the background while the next one is consumed."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
E = TypeVar("E")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class InFlight(Generic[T, E, R]):
    """A submitted batch: its records (to retry them if the write fails), what the
    caller needs to account for it, and the write."""

    items: Sequence[T]
    summary: E
    future: Future[R]
    submitted: float = field(default_factory=time.monotonic)


class BackgroundWriter(Generic[T, E, R]):
    """At most one write in flight, on one worker thread.

    The consumer thread keeps polling and decoding the next batch while Postgres takes
    this one (psycopg releases the GIL while it waits for the server). The caller settles
    a write (:meth:`take`) before it submits the next one, so batches commit in order.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="materializer-writer")
        self.inflight: InFlight[T, E, R] | None = None

    @property
    def busy(self) -> bool:
        """True while a submitted write has not finished."""
        return self.inflight is not None and not self.inflight.future.done()

    @property
    def done(self) -> bool:
        """True when a finished write waits to be taken."""
        return self.inflight is not None and self.inflight.future.done()

    def submit(self, items: Sequence[T], summary: E, write: Callable[[], R]) -> None:
        """Start ``write`` on the worker thread. Raises RuntimeError if one is in flight."""
        if self.inflight is not None:
            raise RuntimeError("a write is already in flight: take() it first")
        self.inflight = InFlight(items, summary, self._pool.submit(write))

    def take(self) -> InFlight[T, E, R] | None:
        """Wait for the write in flight (if any) to finish and hand it over.

        The returned future is done: its ``result()`` returns or raises what the write did.
        """
        inflight, self.inflight = self.inflight, None
        if inflight is not None:
            # wait() never raises the write's exception: the caller reads it from result().
            wait([inflight.future])
        return inflight

    def close(self) -> None:
        """Wait for the write in flight and stop the worker thread."""
        self._pool.shutdown(wait=True)
