"""Scenario 4: poison records on the events topic end in the DLQ; the rest materializes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from convsync.kafka import make_producer
from convsync.settings import Settings
from deploy.simulator.webhooks import WebhookSender
from schemas.envelope import Envelope
from schemas.records import DeadLetter
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

PAGES = ["401", "402", "403", "404"]


def poisons() -> list[bytes | None]:
    """Records no materializer can store, each of a different kind."""
    good = Envelope.build(
        kind="message",
        page_id="401",
        psid="9000000000000001",
        mid="m_poison",
        occurred_at=1_767_225_600_000,
        source="webhook",
        direction="inbound",
        text="fine",
        raw={},
    ).to_bytes()
    return [
        None,  # a tombstone: no value
        b"",
        b"not json at all",
        b"\xff\xfe\x00 binary",
        b'{"schema_version": 1}',
        b"[1, 2, 3]",
        good[: len(good) // 2],  # truncated
        good.replace(b'"schema_version":1', b'"schema_version":99'),
        good.replace(b'"fine"', b'"NUL \\u0000 inside"'),  # Postgres cannot store NUL
        good.replace(b'"kind":"message"', b'"kind":"telepathy"'),
    ]


def test_poison_goes_to_dlq(shared: Settings, scenario_logs: Path) -> None:
    began = time.monotonic()
    bad = poisons() * 3
    bodies = make_bodies(WebhookSender(SECRET, seed=4), PAGES, 1200)
    with Pipeline(shared, scenario_logs) as pipe:
        pipe.start("gateway", "materializer")
        load = Load(f"{pipe.gateway_url}/webhook", bodies, rate=200)
        load.start()

        # Poison arrives between good records, on the pages' own keys (same partitions).
        def inject() -> None:
            for i, value in enumerate(bad):
                time.sleep(0.15)
                produce_raw(shared, PAGES[i % len(PAGES)].encode(), value)

        injector = threading.Thread(target=inject, daemon=True)
        injector.start()
        load.join(180)
        injector.join(60)
        wait_caught_up(shared, pipe.group, timeout=120)
        result = check(shared, truth_of(load.accepted))
        assert not pipe.dead(), pipe.dead()
    letters = [DeadLetter.model_validate_json(m.value() or b"") for m in read_topic(shared, "dlq")]
    originals = sorted((d.original_value() or b"") for d in letters)
    files, _lines, hits = scan_secrets(pipe.logs(), pipe.secrets())
    reasons = sorted({d.reason.split(" (")[0][:60] for d in letters})
    write_result(
        4,
        "Poison records on the events topic",
        done=(
            "A gateway and a materializer subprocess on fresh topics of the shared stack; "
            f"while webhooks flow, {len(bad)} poison records of {len(poisons())} kinds are "
            "produced straight to the events topic on the pages' keys (no value, empty, "
            "not JSON, binary, wrong shape, truncated, unknown schema version, a NUL "
            "character Postgres cannot store, an unknown kind). The DLQ is read back."
        ),
        scale="1,200 bodies at 200/s with 30 poison records (issue: no size given)",
        figures={
            **load_figures(load),
            "poison records produced": len(bad),
            "dead letters": len(letters),
            "dead letters with a reason": sum(1 for d in letters if d.reason),
            "dead-letter reasons (distinct)": reasons,
            **comparison_figures(result),
            "log files scanned / secret hits": f"{files} / {len(hits)}",
        },
        seconds=time.monotonic() - began,
    )
    assert len(letters) == len(bad)
    assert originals == sorted(v or b"" for v in bad)
    assert all(d.reason and d.component == "materializer" for d in letters)
    assert all(d.topic == shared.topic("events") for d in letters)
    assert load.gave_up == 0 and hits == []
    assert_exact(result)


def produce_raw(settings: Settings, key: bytes, value: bytes | None) -> None:
    """Produce one raw record (``None``: a tombstone) to the events topic."""
    producer = make_producer(settings)
    producer.produce(settings.topic("events"), value, key=key)
    assert producer.flush(30) == 0
