"""`convsync crawl PAGE --wait` against a running worker, and `--wait` on a failing crawl."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app
from convsync.settings import Settings
from deploy.simulator.graph_api import Faults, GraphWorld
from deploy.simulator.graph_instagram import instagram_inbox
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema
from tests.producers.crawler.conftest import fast_crawler, start_worker

pytestmark = pytest.mark.integration


def env_of(settings: Settings) -> dict[str, str]:
    return {
        "CONVSYNC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CONVSYNC_DATABASE_URL": settings.database_url.get_secret_value(),
        "CONVSYNC_TOPIC_PREFIX": settings.topic_prefix,
        "CONVSYNC_DB_SCHEMA": settings.db_schema,
    }


def test_crawl_wait_reports_progress_and_the_result(
    make_topics: MakeTopics, make_schema: MakeSchema, fake_graph: Any
) -> None:
    settings = make_schema(base=make_topics(partitions=3))
    world = GraphWorld.generate(seed=17, conversations=8, no_user=1)
    graph = fake_graph(world)
    page = world.page_ids[0]
    running = start_worker(settings, graph)
    try:
        result = CliRunner().invoke(
            app, ["crawl", page, "--full", "--wait", "--timeout", "60"], env=env_of(settings)
        )
    finally:
        running.stop()
    assert result.exit_code == 0, result.output
    n = len(world.expected(page)["messages"])
    assert f"{n} messages" in result.output and "1 skipped" in result.output
    assert "done" in result.output


def test_crawl_wait_fails_with_the_reason(
    make_topics: MakeTopics, make_schema: MakeSchema, fake_graph: Any
) -> None:
    settings = make_schema(base=make_topics(partitions=3))
    # code 100: a permanent error of the request (code 10 would be a permission the page
    # lacks: it pauses the crawl, test_token_pause.py)
    world = GraphWorld.generate(seed=18, conversations=3, faults=Faults(permanent_code=100))
    graph = fake_graph(world)
    running = start_worker(settings, graph)
    try:
        result = CliRunner().invoke(
            app, ["crawl", world.page_ids[0], "--wait", "--timeout", "60"], env=env_of(settings)
        )
    finally:
        running.stop()
    assert result.exit_code == 1
    assert "failed" in result.output and "code 100" in result.output


def test_crawl_wait_fails_when_the_crawl_is_cancelled(
    make_topics: MakeTopics, make_schema: MakeSchema, fake_graph: Any
) -> None:
    import threading
    import time

    import psycopg

    from producers.crawler.request import cancel

    settings = make_schema(base=make_topics(partitions=3))
    world = GraphWorld.generate(seed=19, conversations=30)
    graph = fake_graph(world)
    page = world.page_ids[0]
    running = start_worker(settings, graph, fast_crawler(calls_per_second=5.0))
    out: list[Any] = []
    cli = threading.Thread(
        target=lambda: out.append(
            CliRunner().invoke(
                app, ["crawl", page, "--full", "--wait", "--timeout", "60"], env=env_of(settings)
            )
        )
    )
    try:
        cli.start()
        url = settings.database_url.get_secret_value()
        deadline = time.monotonic() + 30
        with psycopg.connect(url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute(
                    f'SELECT crawl_id FROM "{settings.db_schema}".crawl_history'
                    " WHERE page_id = %s AND status = 'running'",
                    (page,),
                ).fetchone()
                if row is not None:
                    assert cancel(conn, settings.db_schema, str(row[0]))
                    break
                time.sleep(0.05)
        cli.join(60)
    finally:
        running.stop()
    (result,) = out
    assert result.exit_code == 1, result.output
    assert "cancelled" in result.output


def test_crawl_via_page_crawls_the_instagram_account(
    make_topics: MakeTopics, make_schema: MakeSchema, fake_graph: Any
) -> None:
    settings = make_schema(base=make_topics(partitions=3))
    world = GraphWorld.generate(seed=19, conversations=3)
    page, account = world.page_ids[0], "17841400000000077"
    world.link_instagram(page, account, instagram_inbox(seed=19, account_id=account))
    graph = fake_graph(world)
    running = start_worker(settings, graph)
    try:
        result = CliRunner().invoke(
            app,
            ["crawl", account, "--via-page", page, "--full", "--wait", "--timeout", "60"],
            env=env_of(settings),
        )
    finally:
        running.stop()
    assert result.exit_code == 0, result.output
    assert f"Instagram account {account} via page {page}" in result.output
    n = len(world.expected(account)["messages"])
    assert f"{n} messages" in result.output and "done" in result.output
    # The account is not its own page: no linked page, no crawl.
    refused = CliRunner().invoke(
        app, ["crawl", account, "--via-page", account], env=env_of(settings)
    )
    assert refused.exit_code == 2 and "not the Instagram account" in refused.output
