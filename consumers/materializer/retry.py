"""Retrying what failed for a passing reason (Postgres or Kafka away): capped exponential
backoff that gives up only when the materializer stops."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from convsync.errors import ConvsyncError, RetryableError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How a retry waits between attempts: given the seconds, returns when they passed (or
#: earlier when stopping).
Wait = Callable[[float], None]


class AbandonedError(ConvsyncError):
    """A batch was given up because the materializer is stopping (nothing was applied)."""


class Stop:
    """A request to stop: :meth:`set` from any thread, or an outside event (the
    command's signal handler sets one)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.outside: threading.Event | None = None

    def set(self) -> None:
        """Ask to stop."""
        self._event.set()

    def is_set(self) -> bool:
        """Return True once stopping was asked for, here or outside."""
        if self.outside is not None and self.outside.is_set():
            self._event.set()
        return self._event.is_set()

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less when stopping is asked for meanwhile."""
        deadline = time.monotonic() + seconds
        while not self.is_set() and time.monotonic() < deadline:
            self._event.wait(min(0.2, max(0.0, deadline - time.monotonic())))


class Retry:
    """Runs an action until it stops raising :class:`RetryableError`.

    Waits ``initial`` seconds after the first failure, doubling up to ``maximum``.
    Retrying is safe for everything the materializer retries: events are idempotent,
    offsets only move forward. Every failed attempt is reported to ``on_retry``.
    """

    def __init__(
        self, *, initial: float, maximum: float, stop: Stop, on_retry: Callable[[], None]
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self._stop = stop
        self._on_retry = on_retry

    def __call__(
        self,
        action: Callable[[], T],
        *,
        max_attempts: int | None = None,
        wait: Wait | None = None,
    ) -> T:
        """Return what ``action`` returns once it succeeds.

        Between attempts ``wait`` (default: sleep) takes the backoff delay; a foreground
        commit keeps serving its consumer group there (:meth:`member.Member.serve`).
        Raises :class:`AbandonedError` when stopping (or out of ``max_attempts``) before
        it succeeded; any error but RetryableError at once.
        """
        delay = self.initial
        attempt = 0
        while True:
            attempt += 1
            try:
                return action()
            except RetryableError as e:
                self._on_retry()
                if self._stop.is_set() or (max_attempts is not None and attempt >= max_attempts):
                    raise AbandonedError(f"gave up after {attempt} attempt(s): {e}") from e
                log.warning("retrying in %.1fs: %s", delay, e)
                (wait or self._stop.sleep)(delay)
                delay = min(delay * 2, self.maximum)
