"""Asynchronous offset commits of the crawl topic, each awaited by its own future."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

log = logging.getLogger(__name__)


class CommitQueue:
    """Commits queued on the loop thread, issued by the poll thread, answered in order.

    The commit itself is issued by the poll thread (:meth:`issue`): a consumer call from
    the loop thread can block inside librdkafka while a rebalance callback on the poll
    thread waits for the loop, a deadlock seen under load.

    One commit request is in flight at a time, carrying the latest queued position of
    every partition: a page's step queues a commit, and at 400 steps/s one request each
    queued up behind each other on the group coordinator's connection until the group's
    heartbeats waited past the session timeout (both workers lost their partitions in
    the 200-page benchmark). The latest position of a partition covers every earlier one
    (its offset and marks are the book's state when it was queued), so its answer
    resolves them all (:meth:`release`).
    """

    # A request unanswered this long no longer holds the next one back (librdkafka
    # answers every commit, with an error if need be; this only bounds a lost answer).
    STALE_AFTER = 10.0

    def __init__(self) -> None:
        self._waiters: dict[int, list[tuple[int, str, asyncio.Future[None]]]] = {}
        self._outbox: dict[int, TopicPartition] = {}
        self._lock = threading.Lock()
        self._in_flight_since: float | None = None
        self.requests = 0  # commit requests issued (the coalescing's measure)

    def put(self, tp: TopicPartition) -> asyncio.Future[None]:
        """Queue ``tp`` (loop thread); the future resolves when Kafka answered it."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # A step that ran from this worker's own continuation moves the marks, not the
        # offset: a commit is told apart by its offset AND its metadata.
        self._waiters.setdefault(tp.partition, []).append((tp.offset, tp.metadata or "", done))
        with self._lock:
            self._outbox[tp.partition] = tp  # the latest position of the partition
        return done

    def issue(self, consumer: Consumer) -> list[int]:
        """Issue the queued commits in one request unless one is still unanswered (poll
        thread); return the partitions whose commit could not be issued."""
        now = time.monotonic()
        with self._lock:
            since = self._in_flight_since
            if not self._outbox or (since is not None and now - since < self.STALE_AFTER):
                return []
            outbox = list(self._outbox.values())
            self._outbox = {}
            self._in_flight_since = now
        try:
            consumer.commit(offsets=outbox, asynchronous=True)
        except KafkaException as e:
            with self._lock:
                self._in_flight_since = None
            parts = [tp.partition for tp in outbox]
            log.warning("commit of crawl partitions %s failed (will retry): %s", parts, e)
            return parts
        self.requests += 1
        return []

    def discard(self, partition: int) -> None:
        """Drop the queued position of a partition this worker no longer owns (a commit
        issued after the revoke could overwrite the new owner's)."""
        with self._lock:
            self._outbox.pop(partition, None)

    def answered(self) -> None:
        """Note that Kafka answered a commit request (poll thread): the next may go."""
        with self._lock:
            self._in_flight_since = None

    def release(self, partition: int, upto: tuple[int, str] | None) -> None:
        """Resolve the futures of ``partition`` up to the commit ``upto`` (its offset and
        metadata; None: all), on the loop thread.

        Commits of a partition are answered in the order they were issued, so the
        answer to one resolves it and every commit issued before it.
        """
        waiters = self._waiters.get(partition, [])
        last = len(waiters) - 1 if upto is None else -1
        if upto is not None:
            for i, (offset, metadata, _) in enumerate(waiters):
                if (offset, metadata) == upto:
                    last = i
                    break
            else:
                # Not ours (a final commit of a revoke): it covers what it passed.
                last = max((i for i, w in enumerate(waiters) if w[0] < upto[0]), default=-1)
        for _, _, fut in waiters[: last + 1]:
            if not fut.done():
                fut.set_result(None)
        self._waiters[partition] = waiters[last + 1 :]


def take(consumer: Consumer, timeout: float) -> list[Message]:
    """Return what is ready, else block up to ``timeout`` seconds for the first record."""
    # consume(n, timeout) waits for n records or the whole timeout: poll waits for one.
    msgs: list[Message] = consumer.consume(500, 0)
    if msgs:
        return msgs
    msg = consumer.poll(timeout)
    return [] if msg is None else [msg]


async def in_thread(fn: Callable[[], None], within: float) -> bool:
    """Run ``fn`` in a daemon thread; return True if it ended within ``within`` seconds.

    A daemon thread (not an executor's) so that a call blocked for good inside
    librdkafka can be left behind without holding the interpreter's exit.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def resolve() -> None:
        if not done.done():
            done.set_result(None)

    def run() -> None:
        try:
            fn()
        finally:
            try:
                loop.call_soon_threadsafe(resolve)
            except RuntimeError:
                log.debug("shutdown call ended after its loop closed")

    threading.Thread(target=run, name="crawler-shutdown", daemon=True).start()
    try:
        await asyncio.wait_for(done, within)
    except TimeoutError:
        return False
    return True
