"""The simulator's app-wide budget (reported in X-App-Usage, code 4 when used up) and the
webhook sender's drops."""

from __future__ import annotations

import aiohttp
import pytest

from deploy.simulator.graph_api import Faults, GraphApiServer, GraphWorld, token_for
from deploy.simulator.webhooks import Dropper
from producers.crawler.exceptions import AppThrottledError
from producers.crawler.graph import classify, parse_usage


@pytest.mark.asyncio
async def test_the_app_budget_is_shared_by_every_page_and_reported() -> None:
    world = GraphWorld.generate(
        seed=3, pages=2, conversations=3, faults=Faults(app_budget=4, app_rate=0.001)
    )
    # a frozen clock: the bucket does not refill during the test
    server = GraphApiServer(world, clock=lambda: 1000.0)
    await server.start()
    seen = []
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(6):
                page = world.page_ids[i % 2]
                url = f"{server.base_url}/{page}/conversations?platform=messenger"
                headers = {"Authorization": f"Bearer {token_for(page)}"}
                async with session.get(url, headers=headers) as resp:
                    seen.append((resp.status, parse_usage(resp.headers), await resp.read()))
            async with session.get(server.base_url.rsplit("/", 1)[0] + "/_calls") as resp:
                calls = await resp.json()
    finally:
        await server.stop()
    # two pages, one budget of 4: the app's use climbs with every call of either page
    assert [u.app_percent for _, u, _ in seen[:4]] == [25, 50, 75, 100]
    assert [s for s, _, _ in seen] == [200, 200, 200, 200, 400, 400]
    status, usage, body = seen[4]
    assert usage.app_percent == 100 and usage.app_regain_seconds > 0
    assert isinstance(classify(status, body, usage), AppThrottledError)
    assert calls["_app"] == {"served": 4, "throttled": 2}


def test_the_dropper_loses_its_share_reproducibly() -> None:
    a, b = Dropper(0.1, seed=5), Dropper(0.1, seed=5)
    kept_a = [i for i in range(2000) if a.keep(i)]
    kept_b = [i for i in range(2000) if b.keep(i)]
    assert kept_a == kept_b and 150 < len(a.dropped) < 250
    assert sorted(kept_a + a.dropped) == list(range(2000))
    assert all(not Dropper(1.0).keep(i) for i in range(10))
    with pytest.raises(ValueError, match="share"):
        Dropper(1.5)
