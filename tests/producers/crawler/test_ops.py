"""`convsync crawler --metrics-addr`: /metrics, /healthz and /status of a crawler process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from deploy.ports import free_ports
from deploy.simulator.graph_api import GraphWorld
from producers.crawler.ops import split_addr
from tests.consumers.procs import REPO, settings_env
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema
from tests.producers.crawler.test_contacts import add_conversation, contacts


def test_addresses_are_host_and_port() -> None:
    assert split_addr("127.0.0.1:9466") == ("127.0.0.1", 9466)
    assert split_addr("[::1]:80") == ("::1", 80)
    assert split_addr(":9466") == ("0.0.0.0", 9466)  # noqa: S104 - what the operator said
    with pytest.raises(Exception, match="host:port"):
        split_addr("localhost")


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - a local test URL
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except urllib.error.URLError:
        return 0, b""  # not listening yet


def metrics(url: str) -> dict[str, float]:
    _, body = fetch(url)
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen in {timeout:.0f}s")
        time.sleep(0.3)


@pytest.mark.integration
def test_the_crawler_process_serves_metrics_health_and_status(
    make_topics: MakeTopics, make_schema: MakeSchema, fake_graph: Any, tmp_path: Path
) -> None:
    settings = make_schema(base=make_topics(partitions=3))
    world = GraphWorld.generate(seed=31, pages=2, conversations=6)
    graph = fake_graph(world)
    # a user seen only through webhooks: named by the process's profile fetcher
    world.add_profile(world.page_ids[0], "4440001", first_name="Web", last_name="Hook")
    add_conversation(settings, world.page_ids[0], "4440001")
    port = free_ports()
    base = f"http://127.0.0.1:{port}"
    env = {
        **settings_env(settings),
        "CONVSYNC_GRAPH_URL": graph.url,
        "CONVSYNC_PAGE_TOKENS": graph.tokens_json(),
        "CONVSYNC_CRAWL_GROUP": f"crawler-ops-{port}",
        # every page is due within the first 2 s: reconciliation crawls them unasked
        "CONVSYNC_RECONCILE_EVERY": "2",
        "CONVSYNC_RECONCILE_TICK": "0.2",
        "CONVSYNC_CONTACT_TICK": "0.2",
        "CONVSYNC_CONTACT_CALLS_PER_SECOND": "100",
    }
    log = (tmp_path / "crawler.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "crawler", "--metrics-addr", f"127.0.0.1:{port}"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: fetch(f"{base}/healthz")[0] == 200, 60, "a healthy crawler")
        done = 'convsync_crawler_crawls{state="done"}'
        fetched = 'convsync_crawler_profile_fetches_total{outcome="fetched"}'
        figures = wait_until(
            lambda: (m := metrics(f"{base}/metrics")).get(done) == 2 and m.get(fetched) and m,
            90,
            "2 crawls done and a profile fetched",
        )
        status = json.loads(fetch(f"{base}/status")[1])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()
    assert figures["convsync_crawler_graph_calls_total"] >= 4
    assert figures["convsync_crawler_reconcile_requests_total"] >= 2
    assert figures['convsync_crawler_throttle_pauses_total{scope="app"}'] == 0
    assert figures["convsync_crawler_pages_never_crawled"] == 0
    assert 0 <= figures["convsync_crawler_reconcile_age_seconds"] < 60
    assert figures["convsync_crawler_pages_silent"] == 0
    assert figures["convsync_pages_needing_reconnect"] == 0
    assert sorted(status["pages"]) == sorted(world.page_ids)
    assert all(p["reconcile_age_seconds"] is not None for p in status["pages"].values())
    assert proc.returncode == 0
    # names: the crawls' participants, and the profile API for the webhook-only user
    names = {psid: row["name"] for psid, row in contacts(settings).items()}
    assert names.pop("4440001") == "Web Hook"
    users = {c.psid for convs in world.conversations.values() for c in convs}
    assert names == {psid: f"User {psid}" for psid in users}
    assert figures[fetched] == 1 and world.profile_calls == {"4440001": 1}


def test_a_crawler_without_the_secret_key_exits_with_the_reason(tmp_path: Path) -> None:
    """Page tokens are stored encrypted: without CONVSYNC_SECRET_KEY the crawler process
    ends at once with what to do, instead of hanging with its services half started."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "CONVSYNC_SECRET_KEY"}
    env["CONVSYNC_STATE_DIR"] = str(tmp_path)  # no secret.key there either
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "crawler"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert proc.returncode != 0
    assert "CONVSYNC_SECRET_KEY is not set" in proc.stdout + proc.stderr
