"""``/admin/pages``: add or update a page and its token, read it (never the token),
remove it; answers for unknown pages and bad bodies."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import requests
from pydantic import SecretStr

from convsync import pages
from convsync.settings import Settings
from tests.admin.conftest import TOKEN, ServerThread
from tests.fixtures.postgres import MakeSchema

pytestmark = pytest.mark.integration

SECRET = "EAAG-page-token-that-must-not-leak-42"


class Client:
    def __init__(self, settings: Settings, server: ServerThread) -> None:
        self.settings = settings
        self.base = server.url + "/admin/pages"

    def call(self, method: str, path: str = "", **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {TOKEN}", **kwargs.pop("headers", {})}
        return requests.request(method, self.base + path, headers=headers, timeout=30, **kwargs)

    def token_of(self, page: str) -> str:
        async def read() -> dict[str, pages.PageToken]:
            async with await psycopg.AsyncConnection.connect(
                self.settings.database_url.get_secret_value(), autocommit=True
            ) as conn:
                cipher = pages.TokenCipher(self.settings.secret_key)
                return await pages.crawler_tokens(conn, self.settings.db_schema, cipher)

        return asyncio.run(read())[page].token.get_secret_value()


@pytest.fixture
def client(make_schema: MakeSchema, stack_settings: Settings) -> Iterator[Client]:
    settings = make_schema(base=stack_settings.model_copy(update={"admin_token": SecretStr(TOKEN)}))
    assert settings.secret_key.get_secret_value()
    server = ServerThread(settings)
    try:
        yield Client(settings, server)
    finally:
        server.stop()


def test_put_get_list_delete(client: Client) -> None:
    r = client.call("PUT", "/1001", json={"access_token": SECRET, "name": "Shop"})
    assert r.status_code == 204, r.text
    r = client.call(
        "PUT", "/1002", json={"access_token": "other", "platform": "instagram", "name": None}
    )
    assert r.status_code == 204, r.text
    assert client.token_of("1001") == SECRET

    one = client.call("GET", "/1001")
    assert one.status_code == 200
    body = one.json()
    assert body["page_id"] == "1001" and body["name"] == "Shop"
    assert body["status"] == "active" and body["platform"] == "messenger"
    assert body["token_source"] == "api" and body["crawl_paused"] is False
    listed = client.call("GET", "")
    assert [p["page_id"] for p in listed.json()["pages"]] == ["1001", "1002"]
    assert listed.json()["pages"][1]["platform"] == "instagram"
    for text in (one.text, listed.text):
        assert SECRET not in text and "access_token" not in text and "token_encrypted" not in text
    paged = client.call("GET", "?limit=1").json()
    assert [p["page_id"] for p in paged["pages"]] == ["1001"] and paged["next_after"] == "1001"
    rest = client.call("GET", "?limit=1&after=1001").json()
    assert [p["page_id"] for p in rest["pages"]] == ["1002"]

    # an update replaces the token; the name stays unless given
    assert client.call("PUT", "/1001", json={"access_token": "rotated"}).status_code == 204
    assert client.token_of("1001") == "rotated"
    assert client.call("GET", "/1001").json()["name"] == "Shop"

    assert client.call("DELETE", "/1001").status_code == 204
    assert client.call("GET", "/1001").status_code == 404
    assert client.call("DELETE", "/1001").status_code == 404
    assert [p["page_id"] for p in client.call("GET", "").json()["pages"]] == ["1002"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/1001", {"platform": "messenger"}),  # no token
        ("/1001", {"access_token": ""}),
        ("/1001", {"access_token": SECRET, "platform": "whatsapp"}),
        ("/1001", {"access_token": SECRET, "extra": 1}),
        ("/1001", {"access_token": 42}),
        ("/1001", {"access_token": SECRET, "name": "x" * 201}),
        ("/not-an-id", {"access_token": SECRET}),
    ],
)
def test_bad_requests_are_400_and_never_echo_the_token(
    client: Client, path: str, body: dict[str, Any]
) -> None:
    r = client.call("PUT", path, json=body)
    assert r.status_code == 400, r.text
    assert SECRET not in r.text
    assert client.call("GET", "").json()["pages"] == []


def test_not_json_unknown_and_unauthenticated(client: Client) -> None:
    r = client.call("PUT", "/1001", data=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert client.call("GET", "/1001").status_code == 404
    assert client.call("GET", "/abc").status_code == 400
    assert client.call("GET", "?limit=0").status_code == 400
    r = requests.put(client.base + "/1001", json={"access_token": SECRET}, timeout=30)
    assert r.status_code == 401
    assert client.call("GET", "").json()["pages"] == []


def test_a_token_with_a_nul_character_is_refused_as_bad_input() -> None:
    """Postgres text cannot hold NUL: such a body is a 400, never a 503 (schemathesis)."""
    from pydantic import ValidationError

    from admin.pages import PageBody

    with pytest.raises(ValidationError):
        PageBody(access_token="tok\x00en")
    assert PageBody(access_token="token").access_token == "token"
