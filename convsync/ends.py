"""The end offsets a consumer's lag gauges need, asked by a thread of its own.

Until 2026-12-06 the materializer's consume loop (and the webhook relay's and mapper's)
asked them itself: one query per owned partition, in turn, each waiting up to a second. When the
broker answered them late the loop stood still for seconds at a time with a backlog
waiting (docs/performance.md, "Lag queries in the consume loop"). Now a thread with a
client of its own asks, and the loop reads what it last learned (with
:func:`convsync.kafka.behind`): a broker slow to answer delays a gauge, never a batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from confluent_kafka import KafkaException, TopicPartition

from convsync.kafka import ClientConfig, make_consumer, read_watermarks

log = logging.getLogger(__name__)


class EndsProbe:
    """The high watermarks of ``topics``' partitions that :meth:`want` names, refreshed
    every ``interval`` seconds (each query bounded by ``timeout``) until :meth:`close`.

    With ``committed=True`` it also learns how far ``group`` committed in each of them
    (:meth:`done`): for a consumer whose progress is its committed offsets (the mapper's
    transactions), not its position.

    Holds one or two numbers per (topic, wanted partition): bounded by the partitions
    owned.
    """

    def __init__(
        self,
        kafka: ClientConfig,
        group: str,
        topics: Iterable[str],
        *,
        interval: float,
        timeout: float = 1.0,
        name: str = "kafka-ends",
        committed: bool = False,
    ) -> None:
        self._topics = tuple(topics)
        self._interval = interval
        self._timeout = timeout
        self._want: tuple[int, ...] = ()
        self._ends: dict[str, dict[int, int]] = {}
        self._done: dict[str, dict[int, int]] = {}
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._asked = threading.Event()
        # Never subscribes or commits, so it joins no group. Its id is ``group`` itself
        # when it reads that group's committed offsets, a name of its own otherwise.
        self._committed = committed
        self._consumer = make_consumer(kafka, group if committed else f"{group}.ends")
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def want(self, partitions: Iterable[int]) -> None:
        """Ask for ``partitions`` from now on (the ones the member owns)."""
        wanted = tuple(sorted(partitions))
        with self._lock:
            if wanted != self._want:
                self._want = wanted
                self._ends = _only(self._ends, wanted)
                self._done = _only(self._done, wanted)
                self._asked.set()  # a new partition's end is wanted now, not next time

    def ends(self, topic: str) -> dict[int, int]:
        """Return the last known high watermark of each wanted partition of ``topic``
        (a partition not answered yet is absent)."""
        with self._lock:
            return dict(self._ends.get(topic, {}))

    def done(self, topic: str) -> dict[int, int]:
        """Return, with ``committed=True``, the offset the group last committed in each
        wanted partition of ``topic`` (its low watermark when the group committed none
        there); a partition not answered yet is absent."""
        with self._lock:
            return dict(self._done.get(topic, {}))

    def close(self) -> None:
        """Stop the thread (within one query's timeout) and close its client."""
        self._halt.set()
        self._asked.set()
        self._thread.join(self._timeout + 5.0)
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as e:
            log.info("end-offset client close: %s", e)

    def _run(self) -> None:
        try:
            while not self._halt.is_set():
                self._asked.clear()
                with self._lock:
                    wanted = self._want
                for topic in self._topics:
                    lows: dict[int, int] = {}
                    for p in wanted:
                        if self._halt.is_set():
                            return
                        marks = self._ask(topic, p)
                        if marks is None:
                            continue
                        lows[p] = marks[0]
                        with self._lock:
                            if p in self._want:
                                self._ends.setdefault(topic, {})[p] = marks[1]
                    if self._committed and lows:
                        self._learn_done(topic, lows)
                self._asked.wait(self._interval)
        except Exception:
            log.exception("end-offset thread stopped; the lag gauges no longer move")

    def _ask(self, topic: str, partition: int) -> tuple[int, int] | None:
        """Return ``(low, high)`` of one partition, or None when the broker did not say."""
        tp = TopicPartition(topic, partition)
        try:
            return read_watermarks(self._consumer, tp, timeout=self._timeout)
        except KafkaException as e:
            log.info("end offset of %s[%s] unknown: %s", topic, partition, e)
            return None

    def _learn_done(self, topic: str, lows: dict[int, int]) -> None:
        """Ask the group's committed offsets of ``lows``' partitions (one request)."""
        try:
            got = self._consumer.committed(
                [TopicPartition(topic, p) for p in sorted(lows)], timeout=self._timeout
            )
        except KafkaException as e:
            log.info("committed offsets of %s unknown: %s", topic, e)
            return
        with self._lock:
            for tp in got:
                if tp.partition in self._want and tp.error is None:
                    done = tp.offset if tp.offset >= 0 else lows[tp.partition]
                    self._done.setdefault(topic, {})[tp.partition] = done


def _only(
    by_topic: dict[str, dict[int, int]], wanted: tuple[int, ...]
) -> dict[str, dict[int, int]]:
    return {t: {p: n for p, n in nums.items() if p in wanted} for t, nums in by_topic.items()}
