"""The deadline machinery's start-up check notices when aiohttp stops working with it."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

import convsync.http
from convsync.http import Deadlines, check_support

pytestmark = pytest.mark.asyncio


@pytest.fixture(autouse=True)
def unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs the check afresh (it runs once per process otherwise)."""
    monkeypatch.setattr(convsync.http, "_SUPPORTED", [])


async def test_this_aiohttp_works_with_the_watch() -> None:
    await check_support(Deadlines())
    assert convsync.http._SUPPORTED == [True]


async def test_an_aiohttp_that_ignores_the_hooked_handler_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Frozen(web.Server):
        """A server whose connections keep the handler it was made with."""

        def __init__(self, handler: Any, **kwargs: Any) -> None:
            self._frozen = handler
            super().__init__(handler, **kwargs)

        @property  # type: ignore[override]
        def request_handler(self) -> Any:
            return self._frozen

        @request_handler.setter
        def request_handler(self, _value: Any) -> None:
            pass

    monkeypatch.setattr(convsync.http.web, "Server", Frozen)
    with pytest.raises(RuntimeError, match="0 requests seen"):
        await check_support(Deadlines())


async def test_a_watch_that_cannot_close_late_headers_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(convsync.http._Watch, "expire", lambda self: None)
    with pytest.raises(RuntimeError, match="late request head was not cut off"):
        await check_support(Deadlines())
