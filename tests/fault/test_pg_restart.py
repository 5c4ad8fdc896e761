"""Scenario 11: Postgres restarted while a crawl, webhooks and the materializer run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from admin.status import collect
from cli.demo import crawl_done
from convsync.db import connect
from deploy.postgres_local import LocalPostgres
from deploy.simulator.graph_api import GraphWorld
from deploy.simulator.webhooks import WebhookSender
from producers.crawler.request import new_request, submit
from schemas.migrate import apply_migrations
from tests.consumers.helpers import wait_for
from tests.fault.harness import (
    SECRET,
    Load,
    Pipeline,
    Progress,
    assert_exact,
    check,
    comparison_figures,
    crawl_and_webhook_truth,
    load_figures,
    make_bodies,
    scan_secrets,
    wait_caught_up,
    write_result,
)
from tests.fixtures.kafka import MakeTopics

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.integration]

# Seconds Postgres stays down in each restart: one short, one past the crawler's and the
# materializer's connection timeouts and their backoff caps (5 s).
DOWN = (2.0, 12.0)


def test_postgres_restarted_under_crawl_webhooks_and_materializer(
    make_topics: MakeTopics, private_postgres: LocalPostgres, scenario_logs: Path
) -> None:
    began = time.monotonic()
    settings = make_topics(partitions=6).model_copy(
        update={
            "database_url": SecretStr(private_postgres.url),
            "db_schema": "fault_pg_restart",
            "page_tokens": {},
        }
    )
    with connect(settings) as conn:
        apply_migrations(conn, schema=settings.db_schema)
    world = GraphWorld.generate(seed=111, pages=2, conversations=300, max_messages=4)
    pages = world.page_ids
    known = {p: [c.psid for c in world.conversations[p] if c.psid] for p in pages}
    bodies = make_bodies(WebhookSender(SECRET, seed=11), pages, 6000, known=known)
    # 12 Graph calls a second per page: each crawl (~310 calls) runs through both restarts.
    slow_crawl = {"CONVSYNC_CRAWL_CALLS_PER_SECOND": "12"}
    faults: list[dict[str, object]] = []
    with Pipeline(settings, scenario_logs, world=world, extra_env=slow_crawl) as pipe:
        pipe.start("gateway", "crawler-1", "materializer")
        progress = Progress(settings, pipe.group)
        progress.start()
        for p in pages:
            submit(settings, new_request(p, full=True))
        load = Load(f"{pipe.gateway_url}/webhook", bodies, rate=150, give_up_after=300)
        load.start()
        for down in DOWN:
            time.sleep(6)
            calls = sum(c.calls for c in world.calls.values())
            t = time.monotonic()
            # Immediate shutdown: every connection cut, transactions in flight lost.
            private_postgres.stop(mode="immediate")
            time.sleep(down)
            private_postgres.start()
            faults.append(
                {
                    "fault": f"Postgres down {down:g} s (immediate stop, start)",
                    "graph calls before": calls,
                    "end": time.monotonic(),
                    "len": time.monotonic() - t,
                }
            )
        load.join(400)
        wait_for(
            lambda: crawl_done(collect(settings), pages), timeout=300, what="the crawls to finish"
        )
        wait_caught_up(settings, pipe.group, timeout=240)
        progress.stop()
        dead = pipe.dead()
        crawls = {str(c["page_id"]): str(c["status"]) for c in collect(settings).crawls}
        result = check(settings, crawl_and_webhook_truth(world, load.accepted))
    logs = {n: (scenario_logs / f"{n}.log").read_text(errors="replace") for n in pipe.comps}
    files, _lines, hits = scan_secrets(pipe.logs(), pipe.secrets())
    crawl_calls = sum(c.calls for c in world.calls.values())
    write_result(
        11,
        "Postgres restarted under a crawl, webhooks and the materializer",
        done=(
            "A Postgres server of the test's own (so it can be stopped), fresh topics on the "
            "shared Kafka, a fake Graph API with 2 pages x 300 conversations, a gateway, one "
            "crawler worker and a materializer as subprocesses. A full crawl of both pages "
            "runs (paced at 12 Graph calls/s per page, so it spans both faults) while signed "
            "webhooks for the same pages and users flow at 150 bodies/s, retried like Meta. "
            f"Postgres is stopped (immediate: every connection cut) twice, for {DOWN[0]:g} s "
            f"and {DOWN[1]:g} s, 6 s apart, and started again. Nothing restarts a component: "
            "the crawler and the materializer must wait the outages out on their own (their "
            "connection pools reconnect), and every component must still run at the end."
        ),
        scale="6,000 bodies at 150/s (about 40 s) + a crawl of 600 conversations; "
        "two Postgres restarts",
        figures={
            **load_figures(load),
            "messages from the crawl": sum(len(world.expected(p)["messages"]) for p in pages),
            "Graph calls of the crawl": crawl_calls,
            "faults": [
                f"{f['fault']} after {f['graph calls before']} Graph calls "
                f"({float(str(f['len'])):.1f} s)"
                for f in faults
            ],
            "materializer catch-up after each restart (s)": [
                progress.recovery(float(str(f["end"]))) for f in faults
            ],
            "crawler: crawl state writes retried": logs["crawler-1"].count(
                "crawl state write failed"
            )
            + logs["crawler-1"].count("crawl state read failed"),
            "materializer: retries logged": logs["materializer"].count("retrying in"),
            "crawls": crawls,
            "components dead at the end (none restarted)": dead,
            **comparison_figures(result),
            "log files scanned / secret hits": f"{files} / {len(hits)}",
        },
        seconds=time.monotonic() - began,
    )
    assert load.gave_up == 0
    assert dead == []
    assert set(crawls.values()) == {"done"}
    assert hits == []
    assert_exact(result)
