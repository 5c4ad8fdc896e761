"""`convsync import`: an import file's messages onto ``<prefix>.events``, durably, in order.

The file is read one line at a time and produced as it is read (key = page id, the
durable producer: idempotent, acks=all), so a file of any size takes bounded memory:
at most one *chunk* of records (``chunk_records`` or ``chunk_bytes``) waits in the
producer. After each chunk the producer is flushed, and only then is the chunk counted
as imported. At a bad line the records before it are flushed first, then the error is
raised with the line number: nothing read before it is lost, and running the same file
again (fixed) produces the same event ids, which the projections store once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from convsync.errors import RetryableError
from convsync.kafka import make_producer
from convsync.settings import Settings
from producers.importer.exceptions import ImportLineError
from producers.importer.lines import read_lines

log = logging.getLogger(__name__)

CHUNK_RECORDS: Final = 5000
CHUNK_BYTES: Final = 16 * 1024 * 1024
#: How long one chunk may wait for Kafka's acknowledgements (seconds).
FLUSH_TIMEOUT: Final = 120.0


@dataclass(slots=True)
class Progress:
    """How far an import got: lines read, messages Kafka acknowledged, blank lines."""

    lines: int = 0
    messages: int = 0
    blank: int = 0
    pages: set[str] = field(default_factory=set)

    @property
    def durable_through(self) -> int:
        """The last line whose message (and every one before it) Kafka acknowledged."""
        return self.lines


@dataclass(slots=True)
class _Chunk:
    records: int = 0
    bytes: int = 0
    last_line: int = 0
    blank: int = 0
    failed: list[str] = field(default_factory=list)
    pages: set[str] = field(default_factory=set)


class Importer:
    """Produces the messages of import files to the events topic (one producer)."""

    def __init__(
        self,
        settings: Settings,
        *,
        chunk_records: int = CHUNK_RECORDS,
        chunk_bytes: int = CHUNK_BYTES,
        flush_timeout: float = FLUSH_TIMEOUT,
        producer: Producer | None = None,
    ) -> None:
        self.topic = settings.topic("events")
        self.chunk_records = chunk_records
        self.chunk_bytes = chunk_bytes
        self.flush_timeout = flush_timeout
        self._producer = producer or make_producer(settings)
        #: What the last :meth:`run` made durable (read it after an error too).
        self.progress = Progress()

    def run(
        self, stream: IO[bytes], *, on_chunk: Callable[[Progress], None] | None = None
    ) -> Progress:
        """Import every line of ``stream``; return the progress (all of it durable).

        Raises :class:`ImportLineError` at a bad line, after every message before it is
        durable (:attr:`progress` then says how far); :class:`RetryableError` when
        Kafka did not acknowledge a chunk (the lines before that chunk are durable).
        """
        done = self.progress = Progress()
        chunk = _Chunk()
        try:
            for read in read_lines(stream):
                if read.envelope is None:
                    chunk.blank += 1
                    chunk.last_line = read.lineno
                    continue
                self._produce(read.envelope.page_id, read.value, chunk)
                chunk.last_line = read.lineno
                if chunk.records >= self.chunk_records or chunk.bytes >= self.chunk_bytes:
                    self._settle(chunk, done)
                    chunk = _Chunk()
                    if on_chunk is not None:
                        on_chunk(done)
        except ImportLineError:
            self._settle(chunk, done)
            raise
        self._settle(chunk, done)
        return done

    def _produce(self, page_id: str, value: bytes, chunk: _Chunk) -> None:
        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                chunk.failed.append(err.str())

        while True:
            try:
                self._producer.produce(
                    self.topic, key=page_id.encode(), value=value, on_delivery=delivered
                )
                break
            except BufferError:
                # librdkafka's queue is full (its own bound): wait for deliveries.
                self._producer.poll(0.1)
            except KafkaException as e:
                raise RetryableError(f"Kafka refused a record: {e}") from e
        self._producer.poll(0)
        chunk.records += 1
        chunk.bytes += len(value)
        chunk.pages.add(page_id)

    def _settle(self, chunk: _Chunk, done: Progress) -> None:
        """Wait until Kafka acknowledged the chunk; then count it into ``done``."""
        deadline = time.monotonic() + self.flush_timeout
        left = self._producer.flush(self.flush_timeout)
        while left and time.monotonic() < deadline:
            left = self._producer.flush(max(0.1, deadline - time.monotonic()))
        if left or chunk.failed:
            why = chunk.failed[0] if chunk.failed else f"{left} not acknowledged in time"
            raise RetryableError(
                f"Kafka did not take the messages after line {done.lines} ({why}); "
                f"lines 1-{done.lines} are imported, run the same file again"
            )
        done.lines = chunk.last_line
        done.messages += chunk.records
        done.blank += chunk.blank
        done.pages |= chunk.pages


def import_file(settings: Settings, path: Path, **kwargs: Any) -> Progress:
    """Import the file at ``path`` (see :meth:`Importer.run`)."""
    with path.open("rb") as stream:
        return Importer(settings, **kwargs).run(stream)


def check_file(path: Path, *, limit: int = 100) -> tuple[int, list[ImportLineError]]:
    """Read the whole file without producing; return its line count and its bad lines
    (at most ``limit``), each with its line number."""
    bad: list[ImportLineError] = []
    lines = 0
    with path.open("rb") as stream:
        while len(bad) < limit:
            try:
                for read in read_lines(stream, first=lines + 1):
                    lines = read.lineno
                break
            except ImportLineError as e:
                # read_lines stops at a bad line (read to its end): go on after it.
                bad.append(e)
                lines = e.lineno
    return lines, bad
