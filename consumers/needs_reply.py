"""Example downstream consumer: print conversations that start waiting for the page's answer.

Reads ``<prefix>.conversations`` (the faust change stream) with a plain confluent-kafka
consumer and prints one JSON line per conversation that *became* in need of a reply.
The stream is at-least-once (a restarted worker may repeat a change with the same
``seq``), so it dedupes by ``(key, seq)``: it keeps the greatest ``seq`` per key and
skips records at or below it, for the most recently seen keys only (:class:`Deduper`).
Run ``python -m consumers.needs_reply --help``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Annotated, TextIO

import orjson
import typer
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from convsync.errors import PoisonError, RetryableError
from convsync.kafka import make_consumer
from convsync.settings import Settings
from schemas.conversation import ConversationChange

log = logging.getLogger(__name__)


@dataclass
class Deduper:
    """Remembers the greatest ``seq`` seen per key, for at most ``max_keys`` keys.

    A change is repeated by a restarted streams worker, which folds again the events
    after its last changelog write: a copy follows its original closely, so the keys
    seen most recently are the ones whose copies can still arrive. Past the bound the
    least recently seen key is forgotten; a copy of a change older than the last
    ``max_keys`` conversations seen would then be printed again, which the output
    allows anyway (it is at-least-once: a crash between printing and committing repeats
    lines). Without a bound one entry per conversation ever seen stayed forever.
    """

    max_keys: int = 100_000
    last: OrderedDict[str, int] = field(default_factory=OrderedDict)

    def accept(self, record: ConversationChange) -> bool:
        """Return True when ``record`` is a change not seen before."""
        key = record.key
        seen = self.last.get(key)
        if seen is not None:
            self.last.move_to_end(key)
            if record.seq <= seen:
                return False
        self.last[key] = record.seq
        if len(self.last) > self.max_keys:
            self.last.popitem(last=False)
        return True


@dataclass
class Counts:
    """What :func:`run` did."""

    records: int = 0
    duplicates: int = 0
    poison: int = 0
    printed: int = 0


def line(record: ConversationChange) -> bytes:
    """Return the JSON line printed for a conversation that needs a reply."""
    return orjson.dumps(
        {
            "key": record.key,
            "seq": record.seq,
            "page_id": record.page_id,
            "psid": record.psid,
            "thread_id": record.thread_id,
            "waiting_since": record.last_inbound_at,
            "last_message_text": record.last_message_text,
        }
    )


def run(
    settings: Settings,
    *,
    group: str,
    out: TextIO,
    idle_exit: float | None = None,
    dedupe: Deduper | None = None,
) -> Counts:
    """Consume until stopped (or ``idle_exit`` seconds without records); return counts.

    Offsets are committed after the lines of a batch are written (at-least-once output).
    Raises :class:`RetryableError` when Kafka fails.
    """
    dedupe = dedupe or Deduper()
    counts = Counts()
    consumer = make_consumer(settings, group)
    consumer.subscribe([settings.topic("conversations")])
    idle_since = time.monotonic()
    try:
        while idle_exit is None or time.monotonic() - idle_since < idle_exit:
            batch = consumer.consume(500, timeout=0.5)
            if not batch:
                continue
            idle_since = time.monotonic()
            next_offsets: dict[tuple[str, int], int] = {}
            for msg in batch:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise RetryableError(f"consume failed: {err}")
                counts.records += 1
                next_offsets[(str(msg.topic()), int(msg.partition() or 0))] = (
                    int(msg.offset() or 0) + 1
                )
                try:
                    record = ConversationChange.from_bytes(msg.value())
                except PoisonError as e:
                    counts.poison += 1
                    log.warning(
                        "skipping %s[%s]@%s: %s", msg.topic(), msg.partition(), msg.offset(), e
                    )
                    continue
                if not dedupe.accept(record):
                    counts.duplicates += 1
                    continue
                if "needs_reply" in record.changes:
                    out.write(line(record).decode() + "\n")
                    counts.printed += 1
            out.flush()
            # 1. the lines are written, 2. then the offsets are committed.
            if next_offsets:
                offsets = [TopicPartition(t, p, o) for (t, p), o in next_offsets.items()]
                consumer.commit(offsets=offsets, asynchronous=False)
    except KafkaException as e:
        raise RetryableError(f"Kafka failed: {e}") from e
    finally:
        consumer.close()
    return counts


def main(
    group: Annotated[str, typer.Option(help="Consumer group.")] = "needs-reply-example",
    idle_exit: Annotated[
        float | None, typer.Option(help="Exit after this many idle seconds.")
    ] = None,
) -> None:
    """Print conversations that need a reply, one JSON line each.

    Settings come from the environment (``eval "$(convsync env)"`` for the local stack).
    """
    logging.basicConfig(level=logging.INFO)
    counts = run(Settings(), group=group, out=sys.stdout, idle_exit=idle_exit)
    log.info("done: %s", counts)


if __name__ == "__main__":
    typer.run(main)
