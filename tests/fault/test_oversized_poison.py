"""Scenario 12: poison records close to Kafka's record limit among normal traffic."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, Message

from convsync.kafka import make_producer
from convsync.settings import Settings
from deploy.simulator.webhooks import WebhookSender
from schemas.records import TRUNCATED_HEADER, VALUE_BYTES_HEADER, VALUE_COPY_LIMIT, DeadLetter
from tests.fault.harness import (
    SECRET,
    Load,
    Pipeline,
    assert_exact,
    check,
    comparison_figures,
    load_figures,
    make_bodies,
    read_topic,
    scan_secrets,
    truth_of,
    wait_caught_up,
    write_result,
)

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.integration]

PAGES = ["1201", "1202", "1203", "1204"]
# Under the producer's message.max.bytes (1,000,000), so Kafka takes each; a whole base64
# copy in a dead letter would be 1.32 MB.
SIZE = 990_000


def oversized() -> list[tuple[str, bytes]]:
    """(kind, value) of records no materializer can store, each about 990 KB."""
    rng = random.Random(12)
    text = "x" * SIZE
    huge_json = orjson.dumps({"schema_version": 1, "kind": "message", "text": text})
    envelope_like = orjson.dumps({"schema_version": 99, "page_id": "1201", "text": text})
    return [
        ("not JSON", b"<" + b"y" * (SIZE - 1)),
        ("binary", rng.randbytes(SIZE)),
        ("JSON of the wrong shape", huge_json[:SIZE]),
        ("unknown schema version", envelope_like[:SIZE]),
    ]


def test_oversized_poison_goes_to_the_dlq(shared: Settings, scenario_logs: Path) -> None:
    began = time.monotonic()
    bad = oversized() * 2
    bodies = make_bodies(WebhookSender(SECRET, seed=12), PAGES, 1500)
    positions: list[tuple[int, int]] = []
    errors: list[KafkaError] = []
    with Pipeline(shared, scenario_logs) as pipe:
        pipe.start("gateway", "materializer")
        load = Load(f"{pipe.gateway_url}/webhook", bodies, rate=200)
        load.start()

        def inject() -> None:
            # Between good records, on the pages' own keys (the same partitions).
            producer = make_producer(shared)

            def delivered(err: KafkaError | None, msg: Message) -> None:
                if err is not None:
                    errors.append(err)
                else:
                    positions.append((int(msg.partition() or 0), int(msg.offset() or 0)))

            for i, (_, value) in enumerate(bad):
                time.sleep(0.6)
                key = PAGES[i % len(PAGES)].encode()
                producer.produce(shared.topic("events"), value, key=key, on_delivery=delivered)
                producer.poll(0)
            assert producer.flush(60) == 0

        injector = threading.Thread(target=inject, daemon=True)
        injector.start()
        load.join(180)
        injector.join(120)
        assert not errors and len(positions) == len(bad), errors
        wait_caught_up(shared, pipe.group, timeout=180)
        result = check(shared, truth_of(load.accepted))
        dead = pipe.dead()
    letters: list[tuple[DeadLetter, dict[str, Any]]] = []
    dlq = read_topic(shared, "dlq")
    for msg in dlq:
        headers = dict(msg.headers() or [])
        letters.append((DeadLetter.model_validate_json(msg.value() or b""), headers))
    lettered = sorted((d.partition, d.offset) for d, _ in letters)
    largest = max((len(m.value() or b"") for m in dlq), default=0)
    originals = [value for _, value in bad]
    files, _lines, hits = scan_secrets(pipe.logs(), pipe.secrets())
    write_result(
        12,
        "Oversized poison records",
        done=(
            "A gateway and a materializer subprocess on fresh topics of the shared stack; "
            f"while webhooks flow at 200 bodies/s, {len(bad)} poison records of about "
            f"{SIZE // 1000} KB ({len(oversized())} kinds: not JSON, binary, JSON of the wrong "
            "shape, an unknown schema version) are produced straight to the events topic on "
            "the pages' keys. A whole base64 copy of one in a dead letter would be over "
            "Kafka's 1 MB record limit: each letter must keep a marked prefix (headers say "
            "what was cut and the original size) and where the original is. The DLQ is "
            "read back."
        ),
        scale=f"1,500 bodies at 200/s with {len(bad)} poison records of {SIZE:,} bytes",
        figures={
            **load_figures(load),
            "poison records produced": len(bad),
            "dead letters": len(letters),
            "dead letters at the poison positions": len(set(lettered) & set(positions)),
            "dead letters marked truncated": sum(
                1 for _, h in letters if h.get(TRUNCATED_HEADER) == b"value"
            ),
            "largest dead letter (bytes)": largest,
            "components dead at the end": dead,
            **comparison_figures(result),
            "log files scanned / secret hits": f"{files} / {len(hits)}",
        },
        seconds=time.monotonic() - began,
    )
    assert dead == [] and load.gave_up == 0 and hits == []
    assert lettered == sorted(positions)  # every poison record once, nothing else
    for letter, headers in letters:
        assert letter.component == "materializer" and letter.topic == shared.topic("events")
        assert headers[TRUNCATED_HEADER] == b"value"
        assert headers[VALUE_BYTES_HEADER] == str(SIZE).encode()
        value = letter.original_value()
        assert value is not None and len(value) == VALUE_COPY_LIMIT
        assert any(v.startswith(value) for v in originals)
    assert largest < 500_000
    assert_exact(result)
