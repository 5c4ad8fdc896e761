"""Scenario 6: 100,000+ random and mutated webhook requests: no 5xx, no crash, no record."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from convsync.settings import Settings
from deploy.simulator.webhooks import KINDS, WebhookSender, signature
from tests.fault.harness import (
    SECRET,
    Pipeline,
    high_watermark,
    rss_kb,
    scan_secrets,
    write_result,
)

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.integration]

PAGES = ["601", "602"]
Request = tuple[bytes, dict[str, str]]


def valid_pool(n: int) -> list[bytes]:
    sender = WebhookSender(SECRET, seed=6)
    return [
        sender.batch(PAGES[: 1 + i % 2], items_per_page=1 + i % 3, kinds=KINDS).raw
        for i in range(n)
    ]


def bad_signature(rng: random.Random, raw: bytes) -> dict[str, str]:
    """Headers whose signature never matches ``raw`` under the app secret."""
    wrong = signature("not-the-secret", raw)
    choice = rng.randrange(10)
    headers = {"Content-Type": "application/json"}
    if choice == 0:
        return headers  # no signature at all
    value = {
        1: wrong,
        2: wrong.upper(),
        3: "sha256=",
        4: "sha256=" + "z" * 64,
        5: wrong[:-1],
        6: "sha1=" + "0" * 40,
        7: " " + wrong + " ",
        8: "sha256=" + signature(SECRET, raw + b" ")[7:],  # the secret, other bytes
        9: "".join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(0, 300))),
    }[choice]
    headers["X-Hub-Signature-256"] = value
    if rng.random() < 0.2:
        headers["X-Hub-Signature"] = "sha1=" + "ab" * 20
    return headers


def signed(raw: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Hub-Signature-256": signature(SECRET, raw)}


def broken_body(rng: random.Random, raw: bytes) -> bytes:
    """Correctly signed bytes that are no page body: truncated JSON, random bytes, wrong types."""
    choice = rng.randrange(6)
    if choice == 0:
        return raw[: rng.randrange(0, len(raw) - 1)]
    if choice == 1:
        return rng.randbytes(rng.randrange(1, 400))
    if choice == 2:
        return json.dumps(rng.choice([[], {}, 5, "page", None, {"object": 1}])).encode()
    if choice == 3:
        return json.dumps({"object": "page", "entry": rng.choice([None, 1, "x", {}])}).encode()
    if choice == 4:
        return raw.replace(b'"object":"page"', b'"object":"pag"', 1) + b"garbage"
    return b"{" * rng.randrange(1, 5000)


def _mutate(rng: random.Random, node: Any, depth: int = 0) -> Any:
    weird: list[Any] = [None, 0, -1, 2**70, 1.5e308, "", "x" * 5000, [], {}, True]
    weird += ["ß✓😊", "\u0000", {"a": [1, {"b": None}]}]
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            roll = rng.random()
            if roll < 0.1:
                continue  # key dropped
            out[k] = rng.choice(weird) if roll < 0.25 else _mutate(rng, v, depth + 1)
        if rng.random() < 0.1:
            out[rng.choice(["extra", "mid", "text", "timestamp", "watermark"])] = rng.choice(weird)
        return out
    if isinstance(node, list):
        items = [_mutate(rng, v, depth + 1) for v in node if rng.random() > 0.1]
        if rng.random() < 0.1:
            items.append(rng.choice(weird))
        return items
    return rng.choice(weird) if rng.random() < 0.3 else node


def mutated_valid(rng: random.Random, raw: bytes) -> bytes:
    """A signed page body with structural mutations: the gateway may accept or refuse it."""
    return json.dumps(_mutate(rng, json.loads(raw))).encode()


def requests(rng: random.Random, pool: list[bytes], phase: str, n: int) -> Iterator[Request]:
    for _ in range(n):
        raw = rng.choice(pool)
        if phase == "signature":
            if rng.random() < 0.3:
                raw = rng.randbytes(rng.randrange(0, 2000))
            yield raw, bad_signature(rng, raw)
        elif phase == "broken":
            body = broken_body(rng, raw)
            yield body, signed(body)
        else:
            body = mutated_valid(rng, raw)
            yield body, signed(body)


async def fire(url: str, reqs: Iterator[Request], *, concurrency: int = 48) -> list[int]:
    """Send every request; return the statuses in order of sending (0: no answer)."""
    statuses: list[int] = []
    timeout = aiohttp.ClientTimeout(total=30)
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=conn) as session:

        async def one(index: int, body: bytes, headers: dict[str, str]) -> None:
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    statuses[index] = resp.status
            except (aiohttp.ClientError, TimeoutError, OSError):
                statuses[index] = 0

        pending: set[asyncio.Task[None]] = set()
        for i, (body, headers) in enumerate(reqs):
            statuses.append(-1)
            pending.add(asyncio.create_task(one(i, body, headers)))
            if len(pending) >= concurrency:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.gather(*pending)
    return statuses


def test_bad_input_never_5xx_never_produces(shared: Settings, scenario_logs: Path) -> None:
    began = time.monotonic()
    rng = random.Random(6)
    pool = valid_pool(1000)
    sizes = {"signature": 45_000, "broken": 40_000, "mutated": 16_000}
    figures: dict[str, Any] = {}
    with Pipeline(shared, scenario_logs) as pipe:
        pipe.start("gateway")
        url = f"{pipe.gateway_url}/webhook"
        gw = pipe.comps["gateway"]
        assert gw.proc is not None
        # Warm up with real traffic so the RSS baseline includes a working producer.
        warm = asyncio.run(fire(url, ((r, signed(r)) for r in pool[:300])))
        assert set(warm) == {200}
        rss_start = rss_kb(gw.proc.pid)
        hw0 = high_watermark(shared, "deliveries")
        answers: dict[str, Counter[int]] = {}
        for phase in ("signature", "broken"):
            answers[phase] = Counter(
                asyncio.run(fire(url, requests(rng, pool, phase, sizes[phase])))
            )
        hw1 = high_watermark(shared, "deliveries")
        # Structurally mutated but signed bodies may be accepted. Send them, then send the
        # accepted ones again: if a refused body had produced records, the first pass
        # would have produced more than the second.
        bodies = list(requests(rng, pool, "mutated", sizes["mutated"]))
        statuses = asyncio.run(fire(url, iter(bodies)))
        answers["mutated"] = Counter(statuses)
        hw2 = high_watermark(shared, "deliveries")
        accepted = [b for b, s in zip(bodies, statuses, strict=True) if s == 200]
        again = asyncio.run(fire(url, iter(accepted)))
        hw3 = high_watermark(shared, "deliveries")
        rss_end = rss_kb(gw.proc.pid)
        alive = gw.alive()
        # Readiness still fine after the storm.
        health = asyncio.run(fire(url, ((r, signed(r)) for r in pool[300:400])))
    files, _lines, hits = scan_secrets(pipe.logs(), pipe.secrets())
    total = sum(sizes.values())
    five = {p: sum(v for k, v in c.items() if k >= 500 or k <= 0) for p, c in answers.items()}
    figures = {
        "requests sent": total,
        "bad signature or header (answers)": dict(sorted(answers["signature"].items())),
        "signed, not a page body (answers)": dict(sorted(answers["broken"].items())),
        "signed, mutated structure (answers)": dict(sorted(answers["mutated"].items())),
        "5xx or no answer": sum(five.values()),
        "records produced by refused / broken bodies": hw1 - hw0,
        "records of mutated bodies, first pass / accepted ones again": f"{hw2 - hw1} / {hw3 - hw2}",
        "gateway RSS start / end (MB)": f"{rss_start / 1024:.0f} / {rss_end / 1024:.0f}",
        "gateway alive at the end": alive,
        "log files scanned / secret hits": f"{files} / {len(hits)}",
        "valid bodies accepted after the storm": f"{sum(1 for s in health if s == 200)} / 100",
        "lost (missing)": "n/a (gateway only)",
        "duplicates": "n/a (gateway only)",
    }
    write_result(
        6,
        "Bad input: random and mutated webhook requests",
        done=(
            "One gateway subprocess (1 worker) on fresh topics of the shared stack, fed by a "
            "concurrent aiohttp client (48 in flight) with requests built in-process from "
            "1,000 real signed bodies: (a) valid or random bodies with missing, wrong, "
            "truncated, upper-cased, wrong-algorithm or garbage signature headers; (b) "
            "correctly signed bytes that are no page body (truncated JSON, random bytes, "
            "wrong types, 5,000 nested braces); (c) correctly signed page bodies with keys "
            "dropped, values replaced by odd types (huge ints, NUL, 5,000-char strings). "
            "Topic high watermarks are compared before and after each phase; 100 valid "
            "bodies are accepted at the end."
        ),
        scale=f"{total:,} requests (issue: at least 100,000)",
        figures=figures,
        seconds=time.monotonic() - began,
    )
    assert five == {"signature": 0, "broken": 0, "mutated": 0}
    assert set(answers["signature"]) <= {403, 413}
    assert 200 not in answers["broken"]
    assert hw1 == hw0
    assert set(again) == {200} and hw2 - hw1 == hw3 - hw2
    assert alive and set(health) == {200}
    assert rss_end < rss_start * 1.5 + 30 * 1024, (rss_start, rss_end)
    assert hits == []
