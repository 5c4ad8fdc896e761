"""The native mapper (``_fastmap.c``) publishes exactly what ``mapping.py`` would.

Every comparison runs :func:`admit` twice on the same body: with the native mapper and
with Python alone (``mapper=None``), and wants the same decision, record for record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import resource
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy.simulator.webhooks import KINDS, WebhookSender, signature
from producers.webhook import native
from producers.webhook.admit import NATIVE, Accepted, admit
from producers.webhook.mapping import map_item
from producers.webhook.payload import decode_body
from schemas.kinds import EVENT_KINDS
from tests.producers.webhook.helpers import SECRET, json_values, reshape

KEY = SECRET.encode()
LIMIT = 1_000_000


def _sign(raw: bytes) -> str:
    return signature(SECRET, raw)


def _native() -> Any:
    assert NATIVE is not None, "the native mapper is not built: run `pip install -e .`"
    return NATIVE


def _same(raw: bytes) -> Any:
    """Admit ``raw`` natively and in Python; assert equal decisions; return the native one."""
    header = _sign(raw)
    fast = admit(KEY, raw, header, max_record_bytes=LIMIT, mapper=_native())
    slow = admit(KEY, raw, header, max_record_bytes=LIMIT, mapper=None)
    assert fast == slow
    return fast


def _fallbacks(raw: bytes) -> Counter[str]:
    """The items the native mapper handed to Python, by their first non-routing key."""
    seen: Counter[str] = Counter()

    def counting(page: str, when: int | None, item: dict[str, Any], channel: str) -> Any:
        seen[next((k for k in item if k not in ("sender", "recipient", "timestamp")), "-")] += 1
        return map_item(page, when, item, channel)

    assert _native().map_entries(decode_body(raw)["entry"], counting) is not None
    return seen


def test_the_native_mapper_is_built_from_the_current_source() -> None:
    module = _native()
    assert hashlib.sha256(native.SOURCE.read_bytes()).hexdigest() == module.SOURCE_SHA


def test_a_stale_or_disabled_build_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    edited = tmp_path / "_fastmap.c"
    edited.write_bytes(native.SOURCE.read_bytes() + b"\n/* edited after the build */\n")
    monkeypatch.setattr(native, "SOURCE", edited)
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        assert native.load() is None
    assert "older than _fastmap.c" in caplog.text
    monkeypatch.setattr(native, "SOURCE", tmp_path / "absent.c")  # an installed wheel
    assert native.load() is not None
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    assert native.load() is None


def test_every_simulated_kind_maps_natively_to_the_same_records() -> None:
    handled: Counter[str] = Counter()
    for seed in range(60):
        sender = WebhookSender(SECRET, seed=seed)
        pages = ["1", str(10**15 + seed)]
        for kind in KINDS:
            raw = sender.batch(
                pages, items_per_page=1 + seed % 3, kinds=[kind], standby_share=(seed % 2) * 0.5
            ).raw
            decision = _same(raw)
            assert isinstance(decision, Accepted)
            handled.update(decision.kinds)
            # The common shape of every kind is mapped natively, not handed back.
            assert not _fallbacks(raw), (kind, seed)
    assert set(handled) == set(EVENT_KINDS)


def _body(items: list[dict[str, Any]], channel: str = "messaging", **entry: Any) -> bytes:
    return orjson.dumps(
        {
            "object": "page",
            "entry": [{"id": "77", "time": 1_700_000_000_000, **entry, channel: items}],
        }
    )


ROUTE = {"sender": {"id": "5"}, "recipient": {"id": "77"}, "timestamp": 1_700_000_000_123}


@pytest.mark.parametrize(
    "items",
    [
        [{**ROUTE, "message": {"mid": 'm\u0000"\\\u2028é😀', "text": "\u001f\t"}}],
        [{**ROUTE, "message": {"mid": "m1", "is_echo": True, "app_id": 0, "metadata": None}}],
        [{**ROUTE, "message": {"mid": "m1", "is_echo": 1}}],
        [{**ROUTE, "message": {"mid": "m1", "quick_reply": {"payload": 0}, "reply_to": {}}}],
        [
            {
                **ROUTE,
                "message": {
                    "mid": "m1",
                    "attachments": [
                        {"type": "image", "payload": {"url": "", "title": 0, "sticker_id": 0}},
                        {"type": None, "url": "u", "title": "t", "payload": []},
                        "not an object",
                        {},
                    ],
                },
            }
        ],
        [{**ROUTE, "message": {"mid": "m1", "attachments": []}, "reaction": {}}],
        [{**ROUTE, "timestamp": 0, "delivery": {"watermark": 0, "mids": ["a", 1, None]}}],
        [{**ROUTE, "timestamp": None, "read": {"watermark": 2**53 - 1}}],
        [{**ROUTE, "read": {"watermark": 2**53}}],
        [{**ROUTE, "reaction": {"mid": "m1", "action": "", "emoji": None, "reaction": "love"}}],
        [{**ROUTE, "message_edit": {"mid": "m1", "num_edit": [1, {"a": 1.5}], "text": 3}}],
        [{**ROUTE, "message_edit": {"mid": "m1", "num_edit": 2.5}}],
        [{**ROUTE, "postback": {"payload": "P", "title": "T", "mid": ""}}],
        [{**ROUTE, "postback": {"payload": {"x": 1}, "referral": {"ref": "r"}}}],
        [{**ROUTE, "referral": {"ref": "r", "source": "ADS", "ad_id": None, "extra": 1}}],
        [{**ROUTE, "take_thread_control": {"action": "keep", "metadata": "m", "channel": 1}}],
        [{**ROUTE, "sender": {"user_ref": "u1"}, "optin": {"ref": "r"}}],
        [{**ROUTE, "sender": {}, "optin": {"user_ref": 12345}}],
        [{**ROUTE, "sender": {"id": True}, "optin": {}}],
        [{**ROUTE, "sender": {"id": "77"}, "recipient": {"id": 6}, "account_linking": {}}],
        [{"sender": {"id": "77"}, "whatever": [1, 2.5, None]}],
        [{**ROUTE, "sender": {"id": "x" * 65}, "message": {"mid": "m1"}}],
        [{**ROUTE, "sender": {"id": -3}, "delivery": {"watermark": 5}}],
        [{**ROUTE, "message": "not an object"}],
        [{**ROUTE, "message": {"text": "no mid"}}],
        [{**ROUTE, "delivery": {"watermark": True}}],
        [{**ROUTE, "reaction": {"action": "react"}}],
    ],
)
@pytest.mark.parametrize("channel", ["messaging", "standby"])
def test_edge_items_map_the_same(items: list[dict[str, Any]], channel: str) -> None:
    _same(_body(items, channel))


@pytest.mark.parametrize(
    "entry",
    [
        {"id": 77, "time": 0},
        {"id": "77", "time": None},
        {"id": "77", "time": 2**53},
        {"id": "77", "time": True},  # not plain: Python validates
        {"id": "007"},
        {"id": "\uff17\uff17"},  # full-width digits: not plain
        {"id": "77", "hop_context": [{"app_id": 1}]},  # ignored fields are counted in Python
    ],
)
def test_edge_entries_map_the_same(entry: dict[str, Any]) -> None:
    item = {**ROUTE, "message": {"mid": "m1", "text": "hi"}}
    raw = orjson.dumps({"object": "page", "entry": [{**entry, "messaging": [item]}]})
    _same(raw)


json_value = json_values(["id", "mid", "payload", "url"], max_leaves=6)
SEEDS = [WebhookSender(SECRET, seed=s).batch(["1", "22"], items_per_page=3).body for s in range(12)]


@st.composite
def reshaped(draw: st.DrawFn) -> bytes:
    """A real body with nested values replaced by random JSON, removed, or added."""
    keys = st.sampled_from(["mid", "text", "is_echo", "watermark", "id"])
    body = reshape(draw, draw(st.sampled_from(SEEDS)), json_value, keys)
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:  # an int beyond 64 bits: send it as Meta would
        return json.dumps(body).encode()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reshaped())
def test_reshaped_bodies_map_the_same(raw: bytes) -> None:
    _same(raw)


@pytest.mark.parametrize("size", [0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 1000])
def test_sha256_matches_hashlib(size: int) -> None:
    data = bytes((i * 7 + size) % 256 for i in range(size))
    assert _native().sha256_hex(data) == hashlib.sha256(data).hexdigest()


def _rss_kb() -> int:
    with Path("/proc/self/status").open() as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_mapping_leaks_no_memory() -> None:
    sender = WebhookSender(SECRET, seed=1)
    entries = [
        decode_body(sender.batch(["1", "22"], items_per_page=3).raw)["entry"] for _ in range(50)
    ]
    # One item the native mapper hands back to Python, so both paths run.
    entries.append(decode_body(_body([{**ROUTE, "message": {"text": "no mid"}}]))["entry"])
    mapper = _native()

    def run(rounds: int) -> None:
        for _ in range(rounds):
            for entry in entries:
                mapper.map_entries(entry, map_item)

    logging.getLogger("producers.webhook.mapping").setLevel(logging.WARNING)
    try:
        run(200)  # warm-up: caches and pools settle
        before = _rss_kb()
        run(2000)  # ~100,000 bodies, ~600,000 events
    finally:
        logging.getLogger("producers.webhook.mapping").setLevel(logging.NOTSET)
    # One leaked object per event would be tens of MB here.
    assert _rss_kb() - before < 4_000
