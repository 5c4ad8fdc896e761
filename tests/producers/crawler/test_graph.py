"""Graph client pieces: usage headers, error families, token stripping, pacing, backoff."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from convsync.errors import RetryableError, ThrottledError
from deploy.simulator.graph_api import GraphWorld, token_for
from producers.crawler.exceptions import CrawlFailedError, ForeignUrlError, GraphPermanentError
from producers.crawler.fetcher import PageFetcher
from producers.crawler.graph import (
    GraphClient,
    PagePacer,
    Usage,
    backoff,
    classify,
    parse_usage,
)
from producers.crawler.urls import strip_secrets
from tests.producers.crawler.conftest import fast_crawler
from tests.producers.crawler.listener import RecordingListener


def err(code: int) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": f"m{code}"}})


def test_parse_usage_takes_the_worst_of_the_page_headers_and_the_app_header_apart() -> None:
    headers = {
        "X-App-Usage": '{"call_count": 12, "total_cputime": 40, "total_time": 3}',
        "X-Page-Usage": '{"call_count": 55}',
        "X-Business-Use-Case-Usage": orjson.dumps(
            {"1": [{"type": "messenger", "call_count": 91, "estimated_time_to_regain_access": 2}]}
        ).decode(),
    }
    # X-App-Usage is the app's (every page's), the others are this page's
    assert parse_usage(headers) == Usage(91.0, 120.0, app_percent=40.0)
    app_only = {"X-App-Usage": '{"call_count": 100, "estimated_time_to_regain_access": 1}'}
    assert parse_usage(app_only) == Usage(0.0, 0.0, 100.0, 60.0)
    assert parse_usage({"X-App-Usage": "not json"}) == Usage()
    # no X-App-Usage: the app's usage is unknown, not 0 %
    assert parse_usage({"X-Page-Usage": '{"call_count": 5}'}).app_percent is None
    assert parse_usage({}) == Usage()


@pytest.mark.parametrize("code", [4, 17, 32, 613, 80001, 80006, 80009])
def test_throttling_codes(code: int) -> None:
    e = classify(400, err(code), Usage(100, 60))
    assert isinstance(e, ThrottledError) and e.retry_after == 60


@pytest.mark.parametrize(
    ("status", "body"), [(500, err(2)), (400, err(1)), (503, b"<html>"), (502, b"")]
)
def test_transient(status: int, body: bytes) -> None:
    e = classify(status, body, Usage())
    assert type(e) is RetryableError


@pytest.mark.parametrize("code", [190, 10, 200, 230, 299, 100])
def test_permanent(code: int) -> None:
    e = classify(400, err(code), Usage())
    assert isinstance(e, GraphPermanentError) and e.code == code and f"code {code}" in str(e)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 410, 413])
@pytest.mark.parametrize("body", [b"", b"<html><body>Forbidden</body></html>", b'{"x": 1}'])
def test_4xx_without_a_graph_code_is_permanent(status: int, body: bytes) -> None:
    e = classify(status, body, Usage())
    assert isinstance(e, GraphPermanentError) and e.status == status and e.code is None


@pytest.mark.parametrize("body", [b"", b"<html>Too Many Requests</html>", err(100)])
def test_http_429_is_throttling(body: bytes) -> None:
    e = classify(429, body, Usage(100, 30))
    assert isinstance(e, ThrottledError) and e.retry_after == 30


@pytest.mark.parametrize(
    ("status", "body"),
    [(408, b""), (408, b"<html>Request Timeout</html>"), (500, b""), (504, b"<html>")],
)
def test_408_and_5xx_without_a_graph_code_are_transient(status: int, body: bytes) -> None:
    e = classify(status, body, Usage())
    assert type(e) is RetryableError


@pytest.mark.asyncio
async def test_a_plain_404_fails_the_fetch_after_one_call(fake_graph: Any) -> None:
    """A 404 with aiohttp's text body (no Graph code) is met once, not retried."""
    world = GraphWorld.generate(seed=23, conversations=1)
    graph = fake_graph(world)
    page = world.page_ids[0]
    async with aiohttp.ClientSession() as session:
        fetch = PageFetcher(
            GraphClient(session, graph.url),
            page_id=page,
            token=token_for(page),
            settings=fast_crawler(max_attempts=3),
        )
        with pytest.raises(CrawlFailedError) as info:
            # not a route of the fake: aiohttp answers 404 "404: Not Found" (text/plain)
            await fetch(f"{graph.url}/{page}/conversations/extra")
    assert "refused (HTTP 404" in str(info.value), str(info.value)


def test_strip_secrets_keeps_the_cursor() -> None:
    url = (
        "https://graph.facebook.com/v21.0/1/conversations?access_token=SECRET&after=abc"
        "&appsecret_proof=PROOF&limit=25&access%5Ftoken=SECRET2&appsecret_time=1"
    )
    out = strip_secrets(url)
    assert out == "https://graph.facebook.com/v21.0/1/conversations?after=abc&limit=25"
    assert strip_secrets("http://x/y?after=1") == "http://x/y?after=1"
    assert strip_secrets("http://x/y?access_token=1") == "http://x/y"
    assert strip_secrets("http://x/y") == "http://x/y"


@given(st.integers(min_value=1, max_value=40))
def test_backoff_is_bounded(attempt: int) -> None:
    assert 0 <= backoff(attempt, base=0.5, cap=30) <= min(30, 0.5 * 2 ** (attempt - 1))


@pytest.mark.asyncio
async def test_pacer_spaces_calls_and_slows_down_near_the_limit() -> None:
    pacer = PagePacer(50.0, slow_down_at=75)
    start = time.monotonic()
    for _ in range(6):
        await pacer.wait()
    assert time.monotonic() - start >= 5 / 50 * 0.95
    pacer.observe(Usage(100, 0))
    assert pacer.factor == 5.0
    pacer.observe(Usage(50, 0))
    assert pacer.factor == 1.0
    pacer.observe(Usage(100, 0.2))
    start = time.monotonic()
    await pacer.wait()
    assert time.monotonic() - start >= 0.15


def proof_of(token: str, secret: str) -> str:
    return hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()


@pytest.mark.asyncio
async def test_the_token_travels_in_the_header_and_the_proof_in_the_query() -> None:
    graph = RecordingListener()
    try:
        async with aiohttp.ClientSession() as session:
            client = GraphClient(session, graph.base_url, app_secret="s3cret")
            url = client.url("123", "conversations", {"limit": 5})
            await client.get(f"{url}&access_token=LEAKED&appsecret_proof=OLD", "tok-123")
            plain = GraphClient(session, graph.base_url)
            await plain.get(url, "tok-123")
    finally:
        graph.stop()
        heard = graph.requests()
    assert [h.authorization for h in heard] == ["Bearer tok-123", "Bearer tok-123"]
    with_proof, without = (URL(h.path_qs) for h in heard)
    assert with_proof.query.getall("appsecret_proof") == [proof_of("tok-123", "s3cret")]
    assert "access_token" not in with_proof.query and "LEAKED" not in heard[0].path_qs
    assert "tok-123" not in heard[0].path_qs + heard[1].path_qs
    assert "appsecret_proof" not in without.query
    assert with_proof.path == without.path == "/v21.0/123/conversations"


@pytest.mark.asyncio
async def test_a_url_outside_the_origin_is_never_requested() -> None:
    graph, evil = RecordingListener(), RecordingListener()
    try:
        async with aiohttp.ClientSession() as session:
            client = GraphClient(session, graph.base_url, app_secret="s3cret")
            with pytest.raises(ForeignUrlError, match="port"):
                await client.get(f"{evil.base_url}/123/conversations", "tok-123")
            fetch = PageFetcher(client, page_id="123", token="tok-123", settings=fast_crawler())
            with pytest.raises(CrawlFailedError, match="refused to fetch"):
                await fetch(f"{graph.base_url}/../123/conversations")
    finally:
        graph.stop()
        evil.stop()
    assert graph.requests() == [] and evil.requests() == []


@pytest.mark.asyncio
async def test_a_redirect_is_not_followed() -> None:
    evil = RecordingListener()
    graph = RecordingListener(redirect_to=f"{evil.base_url}/123/conversations")
    try:
        async with aiohttp.ClientSession() as session:
            client = GraphClient(session, graph.base_url)
            fetch = PageFetcher(client, page_id="123", token="tok-123", settings=fast_crawler())
            with pytest.raises(CrawlFailedError, match="redirect"):
                await fetch(client.url("123", "conversations", {}))
    finally:
        graph.stop()
        evil.stop()
    assert len(graph.requests()) == 1 and evil.requests() == []


@pytest.mark.asyncio
async def test_the_proof_never_reaches_an_error_text() -> None:
    class Unreachable:
        """A session whose every GET fails with the full URL in the error."""

        def get(self, url: URL, **_: Any) -> Any:
            raise aiohttp.InvalidURL(str(url))

    client = GraphClient(Unreachable(), "https://graph.facebook.com/v21.0", app_secret="s3cret")  # type: ignore[arg-type]
    with pytest.raises(RetryableError) as info:
        await client.get(client.url("123", "conversations", {}), "tok-123")
    assert proof_of("tok-123", "s3cret") not in str(info.value)
    assert "appsecret_proof=***" in str(info.value)


@pytest.mark.asyncio
async def test_the_fake_refuses_a_missing_or_wrong_proof(fake_graph: Any) -> None:
    world = GraphWorld.generate(seed=4, conversations=3)
    page = world.page_ids[0]
    graph = fake_graph(world, app_secret="s3cret")
    async with aiohttp.ClientSession() as session:
        for secret in ("", "wrong"):
            client = GraphClient(session, graph.url, app_secret=secret)
            with pytest.raises(GraphPermanentError, match="appsecret_proof") as info:
                await client.get(
                    client.url(page, "conversations", {"platform": "messenger"}), token_for(page)
                )
            assert info.value.code == 100
        good = GraphClient(session, graph.url, app_secret="s3cret")
        body, _ = await good.get(
            good.url(page, "conversations", {"platform": "messenger"}), token_for(page)
        )
    assert len(body["data"]) == 3
    assert graph.server.proofs_checked == 3
