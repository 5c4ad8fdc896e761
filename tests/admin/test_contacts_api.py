"""The admin API shows each conversation's contact (migration 0015): the user's name."""

from __future__ import annotations

import pytest

from tests.admin.conftest import AdminEnv, message, now_ms
from tests.consumers.helpers import scalar

pytestmark = pytest.mark.integration

_CONTACT = """
INSERT INTO {s}.contacts (page_id, psid, platform, name, first_name, last_name, username,
                          profile_pic, source, fetched_at, error, error_at, attempts)
VALUES (%s, %s, 'messenger', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""


def add_contact(env: AdminEnv, page: str, psid: str, **values: object) -> None:
    row = {
        "name": None,
        "first_name": None,
        "last_name": None,
        "username": None,
        "profile_pic": None,
        "source": "profile_api",
        "fetched_at": None,
        "error": None,
        "error_at": None,
        "attempts": 0,
        **values,
    }
    scalar(env.settings, _CONTACT + " RETURNING 1", page, psid, *row.values())


def test_the_list_and_the_detail_show_the_users_name(admin_env: AdminEnv) -> None:
    t0 = now_ms() - 600_000
    admin_env.produce(
        [message("p5", f"u{i}", f"m{i}", t0 + i * 60_000, text=f"hi {i}") for i in range(4)]
    )
    admin_env.wait_rows(
        lambda: scalar(admin_env.settings, "SELECT count(*) FROM {s}.conversations") == 4,
        "4 conversations",
    )
    add_contact(admin_env, "p5", "u0", name="Ann Lee", source="participants", fetched_at="now")
    add_contact(
        admin_env,
        "p5",
        "u1",
        name="Bo Chan",
        first_name="Bo",
        last_name="Chan",
        profile_pic="https://cdn.example/bo.jpg",
        fetched_at="now",
    )
    add_contact(admin_env, "p5", "u2", error="(#230) permission", error_at="now", attempts=3)
    # another page's contact of the same user id is not this conversation's
    add_contact(admin_env, "p6", "u3", name="Elsewhere", fetched_at="now")
    r = admin_env.get("/pages/p5/conversations")
    assert r.status_code == 200, r.text
    items = {c["psid"]: c["contact"] for c in r.json()["items"]}
    assert items["u0"]["name"] == "Ann Lee" and items["u0"]["source"] == "participants"
    assert items["u1"] == {
        "name": "Bo Chan",
        "first_name": "Bo",
        "last_name": "Chan",
        "username": None,
        "profile_pic": "https://cdn.example/bo.jpg",
        "source": "profile_api",
        "fetched_at": items["u1"]["fetched_at"],
        "error": None,
    }
    assert items["u1"]["fetched_at"] is not None
    assert items["u2"]["name"] is None and items["u2"]["error"] == "(#230) permission"
    assert items["u3"] is None  # no name known yet
    # the tag list reads through the same columns
    assert admin_env.patch(
        "/conversations/p5/u1", json={"tags": ["vip"]}, headers={"If-Match": "0"}
    ).ok
    r = admin_env.get("/pages/p5/conversations", params={"tag": "vip"})
    assert [c["contact"]["name"] for c in r.json()["items"]] == ["Bo Chan"]
    detail = admin_env.get("/conversations/p5/u0").json()
    assert detail["contact"]["name"] == "Ann Lee" and "contact_name" not in detail
    assert admin_env.get("/conversations/p5/u3").json()["contact"] is None


def _names(env: AdminEnv, page: str, **params: str) -> list[str]:
    """Follow the list's cursors from the first page to the last; return the users' names
    (a name, else the username) in the order listed."""
    out: list[str] = []
    cursor = None
    while True:
        r = env.get(
            f"/pages/{page}/conversations",
            params={**params, **({"cursor": cursor} if cursor else {})},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        out += [c["contact"]["name"] or c["contact"]["username"] for c in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return out
        assert len(out) < 100, "the cursors never end"


def test_a_name_prefix_lists_its_users_conversations_newest_first(admin_env: AdminEnv) -> None:
    t0 = now_ms() - 3_600_000
    names = ["Anna Smith", "anneliese Roe", "Bob Annan", "Ärger Ann", "Zoe 100%", "Zoe 1000"]
    admin_env.produce(
        [message("p7", f"u{i}", f"p7-m{i}", t0 + i * 60_000) for i in range(len(names) + 2)]
        + [message("p8", "u0", "p8-m0", t0)]
    )
    admin_env.wait_rows(
        lambda: scalar(admin_env.settings, "SELECT count(*) FROM {s}.conversations") == 9,
        "9 conversations",
    )
    for i, name in enumerate(names):
        first, last = name.split(" ")
        add_contact(admin_env, "p7", f"u{i}", name=name, first_name=first, last_name=last)
    add_contact(admin_env, "p7", "u6", username="annika.ig", source="participants")
    add_contact(admin_env, "p8", "u0", name="Anna Other")  # another page's user
    add_contact(admin_env, "p7", "u9", name="Anne Ghost")  # no conversation (yet)
    # u7 has no contact: never listed under a name; u9 has no conversation: not listed
    # full name, last name or username; any case; newest message first, across cursors
    assert _names(admin_env, "p7", name="ANN", limit="2") == [
        "annika.ig", "Ärger Ann", "Bob Annan", "anneliese Roe", "Anna Smith",
    ]  # fmt: skip
    assert _names(admin_env, "p7", name="anna") == ["Bob Annan", "Anna Smith"]
    assert _names(admin_env, "p7", name="ärg") == ["Ärger Ann"]
    # shorter than three characters: read across the groups of names, the same order
    assert _names(admin_env, "p7", name="An", limit="2") == [
        "annika.ig", "Ärger Ann", "Bob Annan", "anneliese Roe", "Anna Smith",
    ]  # fmt: skip
    assert _names(admin_env, "p7", name="z", limit="1") == ["Zoe 1000", "Zoe 100%"]
    assert _names(admin_env, "p7", name="Ä") == ["Ärger Ann"]
    # LIKE's metacharacters are the characters themselves
    assert _names(admin_env, "p7", name="zoe 100%") == ["Zoe 100%"]
    assert _names(admin_env, "p7", name="a_n") == []
    assert _names(admin_env, "p7", name="Nobody") == []
    # combined with the other filters
    r = admin_env.patch("/conversations/p7/u1", json={"tags": ["vip"]}, headers={"If-Match": "0"})
    assert r.ok, r.text
    assert _names(admin_env, "p7", name="ann", tag="vip") == ["anneliese Roe"]
    assert _names(admin_env, "p7", name="ann", needs_reply="true", limit="1") == [
        "annika.ig", "Ärger Ann", "Bob Annan", "anneliese Roe", "Anna Smith",
    ]  # fmt: skip
    # a cursor of one name's list does not continue another's
    head = admin_env.get("/pages/p7/conversations", params={"name": "ann", "limit": "1"})
    cursor = head.json()["next_cursor"]
    other = admin_env.get("/pages/p7/conversations", params={"name": "bob", "cursor": cursor})
    assert other.status_code == 400, other.text
    for bad in ("", "x" * 257, "a\x00b"):
        r = admin_env.get("/pages/p7/conversations", params={"name": bad})
        assert r.status_code == 400, (bad, r.text)
