"""The page-body edge model: the fast path for plain bodies equals pydantic's validation."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from deploy.simulator.webhooks import WebhookSender
from producers.webhook.payload import BadBodyError, PageBody, parse_body


def _validated(body: bytes) -> PageBody:
    return PageBody.model_validate(orjson.loads(body))


def _same(fast: PageBody, slow: PageBody) -> None:
    assert fast == slow
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.model_extra == slow.model_extra
    for a, b in zip(fast.entry, slow.entry, strict=True):
        assert a == b
        assert a.model_fields_set == b.model_fields_set
        assert a.model_extra == b.model_extra
    assert fast.model_dump() == slow.model_dump()


def test_simulated_bodies_parse_like_validation() -> None:
    sender = WebhookSender("s", seed=3)
    for i in range(200):
        raw = sender.batch([str(100 + i % 7), "200"], items_per_page=1 + i % 4).raw
        _same(parse_body(raw), _validated(raw))


@pytest.mark.parametrize(
    "body",
    [
        {"object": "page", "entry": []},
        {"object": "page", "entry": [{"id": 5, "time": 7}], "extra_top": [1]},
        {"object": "page", "entry": [{"id": "5", "changes": [{"field": "feed"}]}]},
        {"object": "page", "entry": [{"id": "5", "time": None, "standby": [{"a": 1}]}]},
        {"object": "page", "entry": [{"id": "p 5"}]},  # not digits: the model decides
        {"object": "page", "entry": [{"id": "x" * 64, "time": 1.0}]},
        {"object": "page", "entry": [{"id": "٣"}]},
        {"object": "page", "entry": [{"id": True}]},
        {"object": "page", "entry": [{"id": "5", "messaging": None}]},
        {"object": "page", "entry": [{"id": "5", "messaging": [1]}]},
        {"object": "page", "entry": [{"id": "5", "standby": "not a list"}]},
        {"object": "page", "entry": [{"id": "5", "messaging": [{}], "standby": [{"a": 1}, 2]}]},
        {"object": "page", "entry": [{"id": "5", "messaging": [], "standby": None}]},
        {"object": "page", "entry": [{"id": "5", "hop_context": [1], "z": {}}], "z": 1},
        {"object": "page", "entry": [{"id": "1" * 65}]},
        {"object": "page", "entry": [{"id": ""}]},
        {"object": "page", "entry": ["not an object"]},
    ],
)
def test_edge_bodies_parse_like_validation(body: dict[str, Any]) -> None:
    raw = orjson.dumps(body)
    try:
        slow = _validated(raw)
    except ValueError:
        with pytest.raises(BadBodyError):
            parse_body(raw)
        return
    _same(parse_body(raw), slow)
