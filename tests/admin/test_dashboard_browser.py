"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.admin.conftest import TOKEN, AdminEnv, message, now_ms
from tests.consumers.helpers import scalar

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"


def _loaded(page: Page) -> None:
    page.wait_for_selector("body[data-loaded=true]", timeout=30_000)


def _wait_text(page: Page, selector: str, text: str, timeout: float = 30.0) -> None:
    # Polled from here: the page's CSP (script-src 'self') forbids evaluated predicates.
    deadline = time.monotonic() + timeout
    while page.text_content(selector) != text:
        assert time.monotonic() < deadline, f"{selector} never showed {text}"
        page.wait_for_timeout(250)


def test_dashboard_renders_live_figures(admin_env: AdminEnv, tmp_path: Path) -> None:
    # Live data: conversations through the real materializer, a queued sync.
    t = now_ms() - 120_000
    admin_env.produce(
        [message("p7", f"u{i}", f"m{i}", t + i * 1000, text=f"hello {i}") for i in range(4)]
        + [message("p7", "u0", "r0", t + 10_000, direction="outbound", text="answer")]
    )
    admin_env.wait_rows(
        lambda: scalar(admin_env.settings, "SELECT count(*) FROM {s}.events") == 5, "5 events"
    )
    crawl_id = admin_env.post("/pages/p7/sync").json()["crawl_id"]
    # u0's name, as a crawl's participants give it (contacts)
    scalar(
        admin_env.settings,
        "INSERT INTO {s}.contacts (page_id, psid, name, source, fetched_at)"
        " VALUES ('p7', 'u0', 'Ann Lee', 'participants', now()) RETURNING 1",
    )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            # 1. The bearer header, sent by the browser on every request of the page.
            context = browser.new_context(extra_http_headers={"Authorization": f"Bearer {TOKEN}"})
            page = context.new_page()
            response = page.goto(admin_env.base + "/dashboard")
            assert response is not None and response.status == 200
            _loaded(page)
            assert page.text_content("#events-rows") == "5"
            assert page.text_content("#conversations-rows") == "4"
            assert page.text_content("#dlq-count") == "0"
            rows = page.locator("#needs-reply tbody tr")
            assert rows.count() == 1
            assert rows.first.inner_text().split() == ["p7", "3"]
            recent = page.locator("#recent-syncs tbody tr")
            assert recent.count() == 1 and crawl_id in recent.first.inner_text()
            assert recent.first.locator(".bar").count() == 1
            lags = page.locator("#lags tbody tr")
            assert lags.count() >= 1
            assert (
                sum(int(lags.nth(i).locator("td").nth(5).inner_text()) for i in range(lags.count()))
                == 0
            )
            # 2. Conversation lookup.
            page.fill("#lookup-page", "p7")
            page.fill("#lookup-psid", "u0")
            page.click("#lookup button")
            page.wait_for_selector("#lookup-result[data-status='200']", timeout=10_000)
            assert "answer" in (page.text_content("#lookup-result") or "")
            assert page.text_content("#lookup-contact") == "Ann Lee"
            # 2b. A page's conversations, each with its user's name when one is known.
            page.fill("#page-list-page", "p7")
            page.click("#page-list button")
            page.wait_for_selector("#conversations[data-status='200']", timeout=10_000)
            listed = page.locator("#conversations tbody tr")
            assert listed.count() == 4
            names = [listed.nth(i).locator("td").first.inner_text() for i in range(4)]
            assert sorted(names) == ["", "", "", "Ann Lee"]
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            # 3. New figures show up on the next poll, without a reload.
            admin_env.produce([message("p8", "u9", "m9", now_ms(), text="new")])
            _wait_text(page, "#events-rows", "6")
            context.close()
            # 4. No header: the login form; a wrong token is refused; the right one logs in.
            context = browser.new_context()
            page = context.new_page()
            response = page.goto(admin_env.base + "/dashboard")
            assert response is not None and response.status == 401
            page.fill("input[name=token]", "wrong")
            with page.expect_navigation():
                page.click("button[type=submit]")
            assert page.locator("input[name=token]").count() == 1
            page.fill("input[name=token]", TOKEN)
            with page.expect_navigation():
                page.click("button[type=submit]")
            _loaded(page)
            assert page.text_content("#events-rows") == "6"
            cookies = context.cookies()
            assert [c["httpOnly"] for c in cookies] == [True]
            assert TOKEN not in page.url
            context.close()
        finally:
            browser.close()


def test_dashboard_lists_pages_needing_attention_and_a_pages_crawls(
    admin_env: AdminEnv,
) -> None:
    # Rows as the crawler writes them: an older crawl done, then one failed for good.
    s = admin_env.settings
    for crawl_id, status, minutes in (("c0000000000a", "done", 30), ("c0000000000b", "failed", 5)):
        scalar(
            s,
            "INSERT INTO {s}.crawl_history (crawl_id, page_id, full_crawl, status, requested_at,"
            " started_at, finished_at, last_error) VALUES (%s, 'p9', true, %s,"
            " now() - make_interval(mins => %s), now() - make_interval(mins => %s), now(),"
            " CASE WHEN %s = 'failed' THEN 'gave up after 6 transient errors' END)"
            " RETURNING 1",
            crawl_id,
            status,
            minutes,
            minutes,
            status,
        )
    scalar(
        s,
        "INSERT INTO {s}.crawl_state (page_id, status, crawl_id, last_error, finished_at)"
        " VALUES ('p9', 'failed', 'c0000000000b', 'gave up after 6 transient errors', now())"
        " RETURNING 1",
    )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = browser.new_context(extra_http_headers={"Authorization": f"Bearer {TOKEN}"})
            page = context.new_page()
            page.goto(admin_env.base + "/dashboard")
            _loaded(page)
            rows = page.locator("#attention tbody tr")
            assert rows.count() == 1
            assert rows.first.locator("td").nth(1).inner_text() == "crawl_failed"
            assert "gave up" in rows.first.inner_text()
            # The page's id opens its crawl history, newest first.
            rows.first.locator("button.link").click()
            page.wait_for_selector("#crawl-history[data-status='200']", timeout=10_000)
            history = page.locator("#crawl-history tbody tr")
            assert history.count() == 2
            assert history.nth(0).locator("td").first.inner_text() == "c0000000000b"
            assert history.nth(1).locator("td").first.inner_text() == "c0000000000a"
            # The failed crawl can be cancelled from there (no resume, no retry).
            history.nth(0).locator("button").click()
            page.wait_for_selector("#crawl-history button:has-text('cancelled')", timeout=10_000)
            context.close()
        finally:
            browser.close()
    assert scalar(s, "SELECT status FROM {s}.crawl_history WHERE crawl_id = 'c0000000000b'") == (
        "cancelled"
    )
