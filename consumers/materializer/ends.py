"""The end offsets the lag gauges need, asked by a thread of its own.

Until 2026-12-06 the consume loop asked them itself every ``lag_interval``: one query per
owned partition of the events topic and one of the dead-letter topic, in turn, each
waiting up to a second. When the broker answered them late the loop stood still for
seconds at a time with a backlog waiting (docs/performance.md, "Lag queries in the
consume loop"). Now a thread with a client of its own asks, and the loop reads what it
last learned: a broker slow to answer delays a gauge, never a batch.
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

    Holds one number per (topic, wanted partition): bounded by the partitions owned.
    """

    def __init__(
        self,
        kafka: ClientConfig,
        group: str,
        topics: Iterable[str],
        *,
        interval: float,
        timeout: float = 1.0,
    ) -> None:
        self._topics = tuple(topics)
        self._interval = interval
        self._timeout = timeout
        self._want: tuple[int, ...] = ()
        self._ends: dict[str, dict[int, int]] = {}
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._asked = threading.Event()
        # Never subscribes or commits: it joins no group (the id is librdkafka's due).
        self._consumer = make_consumer(kafka, f"{group}.ends")
        self._thread = threading.Thread(target=self._run, name="materializer-ends", daemon=True)
        self._thread.start()

    def want(self, partitions: Iterable[int]) -> None:
        """Ask for ``partitions`` from now on (the ones the member owns)."""
        wanted = tuple(sorted(partitions))
        with self._lock:
            if wanted != self._want:
                self._want = wanted
                self._ends = {
                    t: {p: n for p, n in ends.items() if p in wanted}
                    for t, ends in self._ends.items()
                }
                self._asked.set()  # a new partition's end is wanted now, not next time

    def ends(self, topic: str) -> dict[int, int]:
        """Return the last known high watermark of each wanted partition of ``topic``
        (a partition not answered yet is absent)."""
        with self._lock:
            return dict(self._ends.get(topic, {}))

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
                    for p in wanted:
                        if self._halt.is_set():
                            return
                        end = self._ask(topic, p)
                        with self._lock:
                            if end is not None and p in self._want:
                                self._ends.setdefault(topic, {})[p] = end
                self._asked.wait(self._interval)
        except Exception:
            log.exception("end-offset thread stopped; the lag gauges no longer move")

    def _ask(self, topic: str, partition: int) -> int | None:
        tp = TopicPartition(topic, partition)
        try:
            return read_watermarks(self._consumer, tp, timeout=self._timeout)[1]
        except KafkaException as e:
            log.info("end offset of %s[%s] unknown: %s", topic, partition, e)
            return None
