"""Scenario 5: Meta re-delivers accepted bodies, some hours later: no duplicate, no change."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from convsync.settings import Settings
from deploy.simulator.webhooks import WebhookSender
from tests.consumers.helpers import conversations
from tests.fault.harness import (
    SECRET,
    Load,
    Pipeline,
    assert_exact,
    check,
    comparison_figures,
    high_watermark,
    load_figures,
    make_bodies,
    scan_secrets,
    truth_of,
    wait_caught_up,
    write_result,
)

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.integration]

PAGES = ["501", "502", "503"]
HOURS = 3 * 3_600_000


def test_redelivery_changes_nothing(shared: Settings, scenario_logs: Path) -> None:
    began = time.monotonic()
    rng = random.Random(5)
    sender = WebhookSender(SECRET, seed=5)
    first = make_bodies(sender, PAGES, 1500)
    sender.clock += HOURS  # the next facts happen hours later
    later = make_bodies(sender, PAGES, 500)
    with Pipeline(shared, scenario_logs) as pipe:
        pipe.start("gateway", "materializer")
        url = f"{pipe.gateway_url}/webhook"
        load = Load(url, first + later, rate=200)
        load.start()
        load.join(180)
        wait_caught_up(shared, pipe.group, timeout=120)
        truth = truth_of(load.accepted)
        before = conversations(shared)
        records_before = high_watermark(shared)
        # Meta re-delivers each accepted body 1-3 times; the early ones arrive hours late,
        # after the newer facts (older timestamps than the stored state).
        again = [b for b in load.accepted for _ in range(rng.randint(1, 3))]
        rng.shuffle(again)
        old_share = sum(1 for b in again if b in first) / len(again)
        redelivery = Load(url, again, rate=300)
        redelivery.start()
        redelivery.join(180)
        wait_caught_up(shared, pipe.group, timeout=120)
        after = conversations(shared)
        result = check(shared, truth)
        records_after = high_watermark(shared)
        assert not pipe.dead(), pipe.dead()
    files, _lines, hits = scan_secrets(pipe.logs(), pipe.secrets())
    write_result(
        5,
        "Webhook retries: re-deliveries, some hours late",
        done=(
            "A gateway and a materializer subprocess on fresh topics of the shared stack. "
            "1,500 signed bodies, then 500 more whose facts happen 3 simulated hours later; "
            "then every accepted body is sent again 1-3 times in random order (the early "
            "ones now carry timestamps hours older than the stored state). The conversations "
            "table is snapshotted before the re-deliveries and compared after."
        ),
        scale="2,000 bodies at 200/s, re-deliveries at 300/s (issue: no size given)",
        figures={
            **load_figures(load),
            "re-delivered bodies": len(again),
            "re-delivery answers": dict(
                sorted((str(k), v) for k, v in redelivery.statuses.items())
            ),
            "share of re-deliveries with hours-old timestamps": round(old_share, 2),
            "records on the events topic before / after re-delivery": (
                f"{records_before} / {records_after}"
            ),
            "conversation rows changed by re-delivery": sum(
                1 for k in before.keys() | after.keys() if before.get(k) != after.get(k)
            ),
            **comparison_figures(result),
            "log files scanned / secret hits": f"{files} / {len(hits)}",
        },
        seconds=time.monotonic() - began,
    )
    assert load.gave_up == 0 and redelivery.gave_up == 0
    assert before == after
    assert hits == []
    assert_exact(result)
