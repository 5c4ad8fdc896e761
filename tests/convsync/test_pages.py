"""The pages store against the real Postgres: tokens encrypted at rest, the initial set
never over a stored token, removal, key rotation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr

from convsync import pages
from convsync.errors import ConfigError
from convsync.settings import Settings
from tests.fixtures.postgres import MakeSchema

pytestmark = pytest.mark.integration

T = TypeVar("T")
TOKEN = "EAAG-secret-page-token-0123456789"


@pytest.fixture
def settings(make_schema: MakeSchema) -> Settings:
    return make_schema()


def run(settings: Settings, action: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
    async def main() -> T:
        async with await psycopg.AsyncConnection.connect(
            settings.database_url.get_secret_value(), autocommit=True
        ) as conn:
            return await action(conn)

    return asyncio.run(main())


def put(settings: Settings, cipher: pages.TokenCipher, page: str, token: str) -> bool:
    return run(
        settings,
        lambda c: pages.put_page(
            c, settings.db_schema, cipher, page_id=page, platform="messenger", name="A", token=token
        ),
    )


def tokens(settings: Settings, cipher: pages.TokenCipher) -> dict[str, str]:
    found = run(settings, lambda c: pages.crawler_tokens(c, settings.db_schema, cipher))
    return {p: t.token.get_secret_value() for p, t in found.items()}


def test_token_is_encrypted_at_rest(settings: Settings) -> None:
    cipher = pages.TokenCipher(pages.TokenCipher.new_key())
    assert put(settings, cipher, "1001", TOKEN) is True
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        # every column of the row, as text and as bytes: the token is in none of them
        row = conn.execute(
            sql.SQL("SELECT p::text, token_encrypted FROM {}.pages p").format(
                sql.Identifier(settings.db_schema)
            )
        ).fetchone()
    assert row is not None
    assert TOKEN not in row[0]
    assert TOKEN.encode() not in bytes(row[1])
    assert tokens(settings, cipher) == {"1001": TOKEN}
    # another key cannot read it: a clear error, not a wrong token
    with pytest.raises(ConfigError, match="cannot be decrypted"):
        tokens(settings, pages.TokenCipher(pages.TokenCipher.new_key()))
    # the admin view never carries it
    info = run(settings, lambda c: pages.get_page(c, settings.db_schema, "1001"))
    assert info is not None and TOKEN not in str(info.to_json())


def test_initial_set_never_overwrites_a_stored_token(settings: Settings) -> None:
    cipher = pages.TokenCipher(pages.TokenCipher.new_key())
    put(settings, cipher, "1001", "from-the-api")
    initial = {"1001": SecretStr("old-from-env"), "1002": SecretStr("env-only")}
    added = run(settings, lambda c: pages.seed_pages(c, settings.db_schema, cipher, initial))
    assert added == ["1002"]
    assert tokens(settings, cipher) == {"1001": "from-the-api", "1002": "env-only"}
    # a removed page stays removed: a restart with the same environment does not bring it back
    assert run(settings, lambda c: pages.remove_page(c, settings.db_schema, "1002")) is True
    assert run(settings, lambda c: pages.seed_pages(c, settings.db_schema, cipher, initial)) == []
    assert tokens(settings, cipher) == {"1001": "from-the-api"}
    assert run(settings, lambda c: pages.get_page(c, settings.db_schema, "1002")) is None
    assert run(settings, lambda c: pages.remove_page(c, settings.db_schema, "1002")) is False
    # a PUT brings it back
    assert put(settings, cipher, "1002", "new") is False
    assert tokens(settings, cipher)["1002"] == "new"


def test_bad_fields_and_keys_are_refused(settings: Settings) -> None:
    cipher = pages.TokenCipher(pages.TokenCipher.new_key())
    for page, token in (("abc", "t"), ("1", ""), ("1", "a b\n"), ("1" * 65, "t")):
        with pytest.raises(ValueError):
            put(settings, cipher, page, token)
    with pytest.raises(ConfigError, match="not set"):
        pages.TokenCipher("")
    with pytest.raises(ConfigError, match="Fernet keys"):
        pages.TokenCipher("not-a-key")
    with pytest.raises(ConfigError, match="numeric"):
        run(
            settings,
            lambda c: pages.seed_pages(c, settings.db_schema, cipher, {"x": SecretStr("t")}),
        )


def test_key_rotation(settings: Settings) -> None:
    old = pages.TokenCipher.new_key()
    put(settings, pages.TokenCipher(old), "1001", TOKEN)
    new = pages.TokenCipher.new_key()
    both = pages.TokenCipher(f"{new},{old}")
    assert tokens(settings, both) == {"1001": TOKEN}
    assert run(settings, lambda c: pages.rotate_keys(c, settings.db_schema, both)) == 1
    # the old key is no longer needed
    assert tokens(settings, pages.TokenCipher(new)) == {"1001": TOKEN}


def test_a_refusal_of_a_replaced_token_changes_nothing(settings: Settings) -> None:
    cipher = pages.TokenCipher(pages.TokenCipher.new_key())
    put(settings, cipher, "1001", "old")
    seen = run(settings, lambda c: pages.crawler_tokens(c, settings.db_schema, cipher))["1001"]
    put(settings, cipher, "1001", "new")  # replaced while the old one's call was in flight

    def refuse(version: Any) -> Callable[[psycopg.AsyncConnection[Any]], Awaitable[str | None]]:
        return lambda c: pages.token_rejected(
            c,
            settings.db_schema,
            "1001",
            version=version,
            message="the token expired: reconnect the page",
            error="Graph said 190",
            paused_crawl=b'{"seq": 1}',
        )

    assert run(settings, refuse(seen.version)) is None
    info = run(settings, lambda c: pages.get_page(c, settings.db_schema, "1001"))
    assert info is not None and info.status == "active" and not info.crawl_paused
    current = run(settings, lambda c: pages.crawler_tokens(c, settings.db_schema, cipher))["1001"]
    assert run(settings, refuse(current.version)) == "active"  # this call made the change
    assert run(settings, refuse(current.version)) == "needs_reconnect"  # already said
    info = run(settings, lambda c: pages.get_page(c, settings.db_schema, "1001"))
    assert info is not None and info.status == "needs_reconnect" and info.crawl_paused
    assert info.token_last_error == "Graph said 190"
    # a new token makes it active again; the paused crawl waits to be resumed
    put(settings, cipher, "1001", "newest")
    due = run(settings, lambda c: pages.crawls_to_resume(c, settings.db_schema))
    assert [(p, orjson.loads(r)) for p, r in due] == [("1001", {"seq": 1})]
    run(settings, lambda c: pages.crawl_resumed(c, settings.db_schema, "1001", due[0][1]))
    assert run(settings, lambda c: pages.crawls_to_resume(c, settings.db_schema)) == []
