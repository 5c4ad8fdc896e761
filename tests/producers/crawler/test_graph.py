"""Graph client pieces: usage headers, error families, token stripping, pacing, backoff."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from convsync.errors import RetryableError, ThrottledError
from deploy.simulator.graph_api import GraphWorld, token_for
from producers.crawler.exceptions import CrawlFailedError, GraphPermanentError
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


def err(code: int) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": f"m{code}"}})


def test_parse_usage_takes_the_worst_of_every_header() -> None:
    headers = {
        "X-App-Usage": '{"call_count": 12, "total_cputime": 40, "total_time": 3}',
        "X-Page-Usage": '{"call_count": 55}',
        "X-Business-Use-Case-Usage": orjson.dumps(
            {"1": [{"type": "messenger", "call_count": 91, "estimated_time_to_regain_access": 2}]}
        ).decode(),
    }
    assert parse_usage(headers) == Usage(91.0, 120.0)
    assert parse_usage({"X-App-Usage": "not json"}) == Usage()
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
