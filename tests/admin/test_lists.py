"""The admin API's lists: tag lists, a conversation's messages and events, cursors bound
to the list that made them (real gateway, Kafka, Postgres and materializer)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from psycopg import sql

from convsync.db import connect
from schemas.envelope import Envelope
from tests.admin.conftest import AdminEnv, message, now_ms
from tests.consumers.helpers import scalar

pytestmark = pytest.mark.integration


def _all_pages(env: AdminEnv, path: str, **params: str) -> list[list[dict[str, Any]]]:
    """Follow next_cursor from the first page to the last; return every page's items."""
    pages: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        r = env.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 100, "the cursors never end"


def _conversations(env: AdminEnv, page: str, n: int, t0: int) -> None:
    env.produce([message(page, f"u{i}", f"{page}-m{i}", t0 + i * 60_000) for i in range(n)])
    env.wait_rows(
        lambda: (
            scalar(env.settings, "SELECT count(*) FROM {s}.conversations WHERE page_id = %s", page)
            == n
        ),
        f"{n} conversations",
    )


def _tag(env: AdminEnv, page: str, psid: str, tags: list[str]) -> None:
    version = env.get(f"/conversations/{page}/{psid}").headers["ETag"]
    r = env.patch(
        f"/conversations/{page}/{psid}", json={"tags": tags}, headers={"If-Match": version}
    )
    assert r.status_code == 200, r.text


def test_a_tag_lists_its_conversations_newest_first_as_they_change(admin_env: AdminEnv) -> None:
    t0 = now_ms() - 3_600_000
    _conversations(admin_env, "p1", 7, t0)
    _conversations(admin_env, "p2", 2, t0)
    for psid in ("u1", "u3", "u4", "u6"):
        _tag(admin_env, "p1", psid, ["vip"])
    _tag(admin_env, "p1", "u5", ["spam"])
    _tag(admin_env, "p2", "u1", ["vip"])
    path = "/pages/p1/conversations"
    pages = _all_pages(admin_env, path, tag="vip", limit="2")
    assert [[c["psid"] for c in p] for p in pages] == [["u6", "u4"], ["u3", "u1"]]
    assert all(c["tags"] == ["vip"] for p in pages for c in p)
    # A new message makes u1 the newest: the tag's list follows (through the materializer).
    admin_env.produce([message("p1", "u1", "p1-new", now_ms())])
    admin_env.wait_rows(
        lambda: admin_env.get(path, params={"tag": "vip"}).json()["items"][0]["psid"] == "u1",
        "u1 first in the vip list",
    )
    # A tag taken off leaves the list; one added joins it.
    _tag(admin_env, "p1", "u4", [])
    _tag(admin_env, "p1", "u0", ["billing", "vip"])
    r = admin_env.get(path, params={"tag": "vip"})
    assert [c["psid"] for c in r.json()["items"]] == ["u1", "u6", "u3", "u0"]
    # Filters combine: the vip conversations that need a reply (all of them here, the
    # page never answered), and a tag no conversation has.
    both = _all_pages(admin_env, path, tag="vip", needs_reply="true", limit="3")
    assert [[c["psid"] for c in p] for p in both] == [["u1", "u6", "u3"], ["u0"]]
    since = datetime.fromtimestamp((t0 + 3 * 60_000) / 1000, tz=UTC).isoformat()
    r = admin_env.get(path, params={"tag": "vip", "since": since, "limit": "2"})
    assert [c["psid"] for c in r.json()["items"]] == ["u1", "u6"]
    rest = admin_env.get(
        path, params={"tag": "vip", "since": since, "cursor": r.json()["next_cursor"]}
    )
    assert [c["psid"] for c in rest.json()["items"]] == ["u3"]
    assert admin_env.get(path, params={"tag": "none"}).json() == {"items": [], "next_cursor": None}
    assert admin_env.get(path, params={"tag": "Not A Tag"}).status_code == 400


def _timeline(page: str, psid: str, t0: int) -> list[Envelope]:
    events = [
        message(page, psid, f"m{i}", t0 + i * 1000, direction="outbound" if i % 3 else "inbound")
        for i in range(7)
    ]
    # Two messages at the same millisecond: the event id breaks the tie.
    events.append(message(page, psid, "m-tie", t0 + 6 * 1000))
    events.append(
        Envelope.build(
            kind="edit", page_id=page, psid=psid, mid="m2", occurred_at=t0 + 9_000,
            source="webhook", direction="inbound", text="edited", attrs={"num_edit": 1},
            raw={"mid": "m2", "num_edit": 1},
        )
    )  # fmt: skip
    events.append(
        Envelope.build(
            kind="read", page_id=page, psid=psid, occurred_at=t0 + 9_500, watermark=t0 + 9_400,
            source="webhook", raw={"w": 1},
        )
    )  # fmt: skip
    return events


def test_messages_and_events_come_in_keyset_pages(admin_env: AdminEnv) -> None:
    t0 = now_ms() - 60_000
    admin_env.produce(_timeline("p1", "u1", t0))
    admin_env.wait_rows(
        lambda: scalar(admin_env.settings, "SELECT count(*) FROM {s}.events") == 10, "10 events"
    )
    base = "/conversations/p1/u1"
    pages = _all_pages(admin_env, base + "/messages", limit="3")
    assert [len(p) for p in pages] == [3, 3, 2]
    messages = [m for p in pages for m in p]
    times = [(m["occurred_at"], m["event_id"]) for m in messages]
    assert times == sorted(times, reverse=True) and len(set(times)) == 8
    edited = next(m for m in messages if m["mid"] == "m2")
    assert edited["text"] == "edited" and edited["edit_number"] == 1
    events = [e for p in _all_pages(admin_env, base + "/events", limit="4") for e in p]
    assert len(events) == 10 and {e["kind"] for e in events} == {"message", "edit", "read"}
    assert events[0]["kind"] == "read"
    # The detail gives the first page of each and the cursor of the next.
    detail = admin_env.get(base, params={"limit": "3"}).json()
    assert [m["event_id"] for m in detail["messages"]] == [m["event_id"] for m in pages[0]]
    r = admin_env.get(base + "/messages", params={"cursor": detail["messages_next_cursor"]})
    assert [m["event_id"] for m in r.json()["items"]] == [m["event_id"] for m in messages[3:]]
    whole = admin_env.get(base).json()
    assert whole["messages_next_cursor"] is None and whole["events_next_cursor"] is None
    assert admin_env.get("/conversations/p1/ghost/messages").status_code == 404
    assert admin_env.get(base + "/events", params={"limit": "501"}).status_code == 400


def test_a_cursor_only_continues_the_list_that_made_it(admin_env: AdminEnv) -> None:
    t0 = now_ms() - 3_600_000
    _conversations(admin_env, "p1", 4, t0)
    _conversations(admin_env, "p2", 4, t0)
    admin_env.produce(_timeline("p1", "u1", t0))
    admin_env.wait_rows(
        lambda: scalar(admin_env.settings, "SELECT count(*) FROM {s}.events") == 18, "events"
    )
    first = admin_env.get("/pages/p1/conversations", params={"limit": "2", "needs_reply": "true"})
    cursor = first.json()["next_cursor"]
    assert cursor is not None and "u" not in cursor.split(".")[0][:4]
    ok = admin_env.get("/pages/p1/conversations", params={"needs_reply": "true", "cursor": cursor})
    assert ok.status_code == 200
    for path, params in (
        ("/pages/p2/conversations", {"needs_reply": "true"}),
        ("/pages/p1/conversations", {}),
        ("/pages/p1/conversations", {"needs_reply": "false"}),
        ("/pages/p1/conversations", {"needs_reply": "true", "tag": "vip"}),
        ("/conversations/p1/u1/messages", {}),
    ):
        r = admin_env.get(path, params={**params, "cursor": cursor})
        assert r.status_code == 400, (path, params)
        assert "start again from the first page" in r.json()["error"]
    messages = admin_env.get("/conversations/p1/u1/messages", params={"limit": "2"}).json()
    r = admin_env.get("/conversations/p1/u1/events", params={"cursor": messages["next_cursor"]})
    assert r.status_code == 400
    # The readable cursor of old versions is refused, not read.
    old = {"cursor": f"{t0 * 1000}~u1"}
    assert admin_env.get("/pages/p1/conversations", params=old).status_code == 400


def test_the_dashboard_lists_the_pages_with_most_conversations_waiting(
    admin_env: AdminEnv,
) -> None:
    # Straight into the projection (as the materializer's upsert would): the counts are
    # kept by migration 0008's triggers, the dashboard reads them.
    with connect(admin_env.settings) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.conversations (page_id, psid, needs_reply)"
                " SELECT 'p' || (i % 105), 'u' || i, (i / 105 + i % 5) % 3 <> 0"
                " FROM generate_series(1, 2000) AS i"
            ).format(sql.Identifier(admin_env.settings.db_schema))
        )
        expected = conn.execute(
            sql.SQL(
                "SELECT page_id, count(*) FROM {}.conversations WHERE needs_reply"
                " GROUP BY page_id ORDER BY count(*) DESC, page_id LIMIT 100"
            ).format(sql.Identifier(admin_env.settings.db_schema))
        ).fetchall()
    d = admin_env.get("/dashboard/data").json()
    assert [(r["page_id"], r["needs_reply"]) for r in d["needs_reply"]] == expected
    assert len(expected) == 100 and expected[0][1] > expected[-1][1]
