"""The admin API against the real gateway, Kafka, Postgres and materializer."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from psycopg import sql
from pydantic import SecretStr

from admin import AdminSettings
from admin.app import OPENAPI
from consumers.materializer import checksum, replay
from convsync.db import connect
from tests.admin.conftest import TOKEN, AdminEnv, ServerThread, message, now_ms
from tests.consumers.helpers import produce, scalar
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema
from tests.producers.webhook.helpers import with_secrets

pytestmark = pytest.mark.integration


_COUNT = "SELECT count(*) FROM {s}.conversations WHERE page_id = %s"
_MESSAGES = "SELECT message_count FROM {s}.conversations"


def _seed(env: AdminEnv, page: str, users: int, *, t0: int) -> None:
    """Users u0..u{n-1}: one inbound message each, minutes apart; even users got a reply."""
    events = []
    for i in range(users):
        events.append(message(page, f"u{i}", f"m-in-{i}", t0 + i * 60_000, text=f"q{i}"))
        if i % 2 == 0:
            events.append(
                message(page, f"u{i}", f"m-out-{i}", t0 + i * 60_000 + 1000, direction="outbound")
            )
    env.produce(events)
    env.wait_rows(
        lambda: (
            scalar(env.settings, "SELECT count(*) FROM {s}.conversations WHERE page_id = %s", page)
            == users
        ),
        f"{users} conversations of {page}",
    )


def test_auth_is_required_and_checked(
    admin_env: AdminEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = "/pages/p1/conversations"
    r = admin_env.get(path, token=None)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert admin_env.get(path, token="wrong-token").status_code == 403
    r = admin_env.get(path, token=None, headers={"Authorization": f"Basic {TOKEN}"})
    assert r.status_code == 401
    assert admin_env.get(path).status_code == 200
    # A credential in the query string is refused, even next to a right header.
    assert admin_env.get(path, params={"access_token": TOKEN}).status_code == 400
    assert admin_env.get(path, params={"token": "x"}).status_code == 400
    assert admin_env.get(path, params={"limit": TOKEN}).status_code == 400
    for method in (admin_env.post, admin_env.patch):
        assert method("/pages/p1/sync", token=None).status_code in (401, 405)
    assert admin_env.post("/pages/p1/sync", token="nope").status_code == 403
    assert admin_env.patch("/conversations/p1/u1", token=None).status_code == 401
    assert admin_env.get("/openapi.yaml", token=None).status_code == 401
    # The server side (the test's own HTTP client, urllib3, logs its URLs).
    server = [r for r in caplog.records if not r.name.startswith("urllib3")]
    assert server and all(TOKEN not in r.getMessage() for r in server)


def test_dashboard_login_sets_an_httponly_cookie(admin_env: AdminEnv) -> None:
    r = admin_env.get("/dashboard", token=None)
    assert r.status_code == 401
    assert 'name="token"' in r.text
    r = admin_env.post("/login", token=None, data={"token": "wrong"}, allow_redirects=False)
    assert r.status_code == 403
    r = admin_env.post(
        "/login",
        token=None,
        data={"token": TOKEN},
        headers={"Origin": admin_env.server.url},
        allow_redirects=False,
    )
    assert r.status_code == 303
    assert r.headers["Location"] == "/admin/dashboard"
    set_cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    assert f"Max-Age={AdminSettings().session_seconds}" in set_cookie
    # Posted from a plain-HTTP page of 127.0.0.1: the one case without Secure.
    assert "Secure" not in set_cookie
    assert TOKEN not in set_cookie
    cookies = r.cookies
    assert admin_env.get("/dashboard", token=None, cookies=cookies).status_code == 200
    assert admin_env.get("/dashboard/data", token=None, cookies=cookies).status_code == 200
    # The cookie never authorizes a change (no cross-site forms).
    r = admin_env.patch(
        "/conversations/p1/u1", token=None, cookies=cookies, headers={"If-Match": "0"}, json={}
    )
    assert r.status_code == 401
    assert (
        admin_env.get("/dashboard", token=None, cookies={"convsync_admin": "x"}).status_code == 403
    )
    # /dashboard on the private listener leads to the admin page.
    r = admin_env.get("/../dashboard", token=None, allow_redirects=False)
    assert r.status_code == 302


def test_sync_of_an_instagram_account_names_its_linked_page(admin_env: AdminEnv) -> None:
    account = "17841400000000001"
    for bad in ({"via_page": "a/b"}, {"via_page": account}, {"via_page": 7}):
        r = admin_env.post(f"/pages/{account}/sync", json=bad)
        assert r.status_code == 400, (bad, r.text)
    assert admin_env.crawl_records() == 0
    r = admin_env.post(f"/pages/{account}/sync", json={"via_page": "123", "full": True})
    assert r.status_code == 202, r.text
    assert r.json()["page_id"] == account and r.json()["joined"] is False
    assert admin_env.crawl_records() == 1


def test_sync_is_accepted_and_joins_a_running_crawl(admin_env: AdminEnv) -> None:
    r = admin_env.post("/pages/123/sync", json={"full": True})
    assert r.status_code == 202, r.text
    first = r.json()
    assert first["joined"] is False and first["status"] == "queued"
    assert first["page_id"] == "123"
    # A second request while the first is queued joins it: no second crawl record.
    r = admin_env.post("/pages/123/sync")
    assert r.status_code == 202
    assert r.json() == {**first, "joined": True}
    assert admin_env.crawl_records() == 1
    assert (
        scalar(
            admin_env.settings,
            "SELECT full_crawl FROM {s}.crawl_history WHERE crawl_id = %s",
            first["crawl_id"],
        )
        is True
    )
    # A crawl the crawler is running (crawl_state) is joined too.
    with connect(admin_env.settings) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.crawl_state (page_id, status, crawl_id)"
                " VALUES ('456', 'running', 'abc123')"
            ).format(sql.Identifier(admin_env.settings.db_schema))
        )
    r = admin_env.post("/pages/456/sync")
    assert r.status_code == 202
    assert r.json() == {"page_id": "456", "crawl_id": "abc123", "status": "running", "joined": True}
    assert admin_env.crawl_records() == 1
    assert admin_env.post("/pages/123/sync", data=b"{nope").status_code == 400
    assert admin_env.post("/pages/bad%20id/sync").status_code == 400


def test_list_filters_and_keyset_pages(admin_env: AdminEnv) -> None:
    t0 = now_ms() - 3_600_000
    _seed(admin_env, "p1", 7, t0=t0)
    _seed(admin_env, "p2", 2, t0=t0)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        r = admin_env.get("/pages/p1/conversations", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["items"]) <= 3
        seen += [c["psid"] for c in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [f"u{i}" for i in range(6, -1, -1)]  # newest first, each once
    r = admin_env.get("/pages/p1/conversations", params={"needs_reply": "true"})
    assert sorted(c["psid"] for c in r.json()["items"]) == ["u1", "u3", "u5"]
    assert all(c["needs_reply"] for c in r.json()["items"])
    r = admin_env.get("/pages/p1/conversations", params={"needs_reply": "false", "limit": "2"})
    assert [c["psid"] for c in r.json()["items"]] == ["u6", "u4"]
    since = datetime.fromtimestamp((t0 + 4 * 60_000) / 1000, tz=UTC).isoformat()
    r = admin_env.get("/pages/p1/conversations", params={"since": since})
    assert [c["psid"] for c in r.json()["items"]] == ["u6", "u5", "u4"]
    for bad in (
        {"limit": "0"},
        {"limit": "x"},
        {"cursor": "garbage!"},
        {"needs_reply": "maybe"},
        {"since": "yesterday"},
        {"other": "1"},
    ):
        assert admin_env.get("/pages/p1/conversations", params=bad).status_code == 400, bad
    assert admin_env.get("/pages/nobody/conversations").json() == {"items": [], "next_cursor": None}


def test_conversation_detail_and_tags_with_versions(admin_env: AdminEnv) -> None:
    _seed(admin_env, "p1", 1, t0=now_ms() - 60_000)
    r = admin_env.get("/conversations/p1/u0")
    assert r.status_code == 200
    body = r.json()
    assert r.headers["ETag"] == '"0"'
    assert body["tags"] == [] and body["tags_version"] == 0
    assert {e["kind"] for e in body["events"]} == {"message"}
    assert sorted(m["direction"] for m in body["messages"]) == ["inbound", "outbound"]
    assert body["message_count"] == 2
    path = "/conversations/p1/u0"
    assert admin_env.patch(path, json={"tags": ["vip"]}).status_code == 428
    r = admin_env.patch(path, json={"tags": ["vip", "billing", "vip"]}, headers={"If-Match": "0"})
    assert r.status_code == 200, r.text
    assert r.json()["tags"] == ["billing", "vip"] and r.headers["ETag"] == '"1"'
    stale = admin_env.patch(path, json={"tags": []}, headers={"If-Match": '"0"'})
    assert stale.status_code == 412
    r = admin_env.patch(path, json={"tags": ["vip"]}, headers={"If-Match": '"1"'})
    assert r.status_code == 200 and r.json()["tags_version"] == 2
    r = admin_env.get(path)
    assert r.headers["ETag"] == '"2"' and r.json()["tags"] == ["vip"]
    assert (
        admin_env.patch(path, json={"tags": ["Bad Tag"]}, headers={"If-Match": "2"}).status_code
        == 400
    )
    assert admin_env.patch(path, json={"nope": 1}, headers={"If-Match": "2"}).status_code == 400
    assert admin_env.patch(path, json={"tags": []}, headers={"If-Match": "v2"}).status_code == 400
    assert admin_env.get("/conversations/p1/ghost").status_code == 404
    r = admin_env.patch("/conversations/p1/ghost", json={"tags": []}, headers={"If-Match": "0"})
    assert r.status_code == 404


def test_page_reply_clears_configured_tags(admin_env: AdminEnv, make_schema: MakeSchema) -> None:
    t = now_ms()
    admin_env.produce([message("p1", "u1", "m1", t - 600_000, text="help?")])
    admin_env.wait_rows(
        lambda: scalar(admin_env.settings, "SELECT count(*) FROM {s}.conversations") == 1, "row"
    )
    path = "/conversations/p1/u1"
    r = admin_env.patch(path, json={"tags": ["needs_attention", "vip"]}, headers={"If-Match": "0"})
    assert r.status_code == 200
    # A reply older than the tagging (a late backfill) leaves the tags alone.
    admin_env.produce([message("p1", "u1", "m2", t - 300_000, direction="outbound")])
    admin_env.wait_rows(
        lambda: scalar(admin_env.settings, _MESSAGES) == 2,
        "old",
    )
    assert admin_env.get(path).json()["tags"] == ["needs_attention", "vip"]
    # A reply after the tagging clears the configured tag, through the real materializer.
    admin_env.produce([message("p1", "u1", "m3", now_ms() + 1000, direction="outbound")])
    admin_env.wait_rows(
        lambda: scalar(admin_env.settings, _MESSAGES) == 3,
        "new",
    )
    r = admin_env.get(path)
    assert r.json()["tags"] == ["vip"]
    assert r.headers["ETag"] == '"2"'
    assert r.json()["needs_reply"] is False
    # Tags live outside the projection: a replay of the log reproduces it exactly.
    into = make_schema(migrate=False).db_schema
    replay(admin_env.settings, into=into)
    assert checksum(admin_env.settings, into) == checksum(
        admin_env.settings, admin_env.settings.db_schema
    )
    assert (
        scalar(admin_env.settings, "SELECT count(*) FROM {s}.conversation_tags", schema=into) == 0
    )


def test_openapi_document_is_served(admin_env: AdminEnv) -> None:
    r = admin_env.get("/openapi.yaml")
    assert r.status_code == 200
    assert r.content == Path(OPENAPI).read_bytes()


def test_dashboard_data_has_live_figures(admin_env: AdminEnv) -> None:
    _seed(admin_env, "p9", 3, t0=now_ms() - 60_000)
    r = admin_env.get("/dashboard/data")
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["needs_reply"] == [{"page_id": "p9", "needs_reply": 1}]
    assert d["events_rows"] == 5
    assert d["rates"] and d["rates"][-1]["produced"] == 5
    assert {lag["group"] for lag in d["lags"]} == {admin_env.materializer.config.group}
    assert d["dlq_recent"] == [] and d["errors"] == []
    # A poison record: the materializer dead-letters it and the dashboard lists it.
    produce(admin_env.settings, [b"not an envelope"], key=b"p9")

    def dead_lettered() -> bool:
        d = admin_env.get("/dashboard/data").json()
        return d["dlq_records"] == 1 and len(d["dlq_recent"]) == 1

    admin_env.wait_rows(dead_lettered, "a DLQ entry on the dashboard")
    d = admin_env.get("/dashboard/data").json()
    entry = d["dlq_recent"][0]
    assert entry["component"] == "materializer"
    assert entry["topic"] == admin_env.settings.topic("events")
    assert entry["reason"]
    # Samples every 2 s: the rate line has points with events/s computed.
    assert len(d["rates"]) >= 2
    assert any(p["events_per_s"] is not None for p in d["rates"])
    assert d["rates"][-1]["produced"] == 6


def test_database_trouble_is_503_not_a_hang(
    make_topics: MakeTopics, make_schema: MakeSchema
) -> None:
    # A schema without the tables: every database read fails, the answers are 503.
    base = with_secrets(make_topics()).model_copy(update={"admin_token": SecretStr(TOKEN)})
    settings = make_schema(migrate=False, base=base)
    server = ServerThread(settings)
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        for path in ("/dashboard/data", "/pages/p1/conversations", "/conversations/p1/u1"):
            r = requests.get(server.url + "/admin" + path, headers=headers, timeout=60)
            assert r.status_code == 503, (path, r.text)
            assert r.json() == {"error": "backend unavailable, retry"}
    finally:
        server.stop()


def test_page_id_longer_than_a_record_takes_is_400(admin_env: AdminEnv) -> None:
    # 64 is the longest page id (and psid) of a crawl request or an envelope.
    r = admin_env.post("/pages/" + "a" * 65 + "/sync")
    assert r.status_code == 400, r.text
    assert admin_env.get("/conversations/p1/" + "u" * 65).status_code == 400
    assert (
        admin_env.get("/pages/p1/conversations", params={"cursor": "n~" + "u" * 65}).status_code
        == 400
    )
    r = admin_env.post("/pages/" + "a" * 64 + "/sync")
    assert r.status_code == 202, r.text
    assert admin_env.crawl_records() == 1


def test_a_trailing_newline_does_not_pass_validation(admin_env: AdminEnv) -> None:
    _seed(admin_env, "p1", 1, t0=now_ms() - 60_000)
    path = "/conversations/p1/u0"
    r = admin_env.patch(path, json={"tags": ["vip\n"]}, headers={"If-Match": "0"})
    assert r.status_code == 400, r.text
    assert admin_env.get(path).json()["tags"] == []
    assert admin_env.get("/pages/p1%0A/conversations").status_code == 400
    assert admin_env.get("/conversations/p1/u0%0A").status_code == 400
    assert admin_env.post("/pages/p1%0A/sync").status_code == 400
    cursor = {"cursor": "n~u0\n"}
    assert admin_env.get("/pages/p1/conversations", params=cursor).status_code == 400
    assert admin_env.crawl_records() == 0
    with pytest.raises(ValueError, match="not a valid tag"):
        AdminSettings(auto_clear_tags=("needs_attention\n",))


def test_admin_off_answers_403_to_every_request(
    make_topics: MakeTopics, make_schema: MakeSchema
) -> None:
    # CONVSYNC_ADMIN_TOKEN unset: the admin API is off, whatever the request carries.
    settings = make_schema(base=with_secrets(make_topics()))
    assert not settings.admin_token.get_secret_value()
    server = ServerThread(settings)
    try:
        base = server.url + "/admin"
        for method, path, headers in (
            ("GET", "/pages/p1/conversations", {}),
            ("GET", "/pages/p1/conversations", {"Authorization": "Bearer x"}),
            ("GET", "/pages/p1/conversations", {"Authorization": "Basic x"}),
            ("POST", "/pages/p1/sync", {}),
            ("PATCH", "/conversations/p1/u1", {"If-Match": "0"}),
            ("GET", "/dashboard", {}),
            ("GET", "/dashboard.css", {}),
            ("POST", "/login", {}),
            ("GET", "/openapi.yaml", {}),
        ):
            r = requests.request(method, base + path, headers=headers, timeout=30)
            assert r.status_code == 403, (method, path, headers, r.status_code)
            assert r.json() == {"error": "admin API disabled"}
    finally:
        server.stop()
