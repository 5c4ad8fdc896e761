"""Real deliveries map byte for byte as recorded: the webhook corpus against its golden files.

The corpus (``tests/corpus/webhooks``) holds bodies of both platforms written from Meta's
webhook reference; ``tests/corpus/golden.py`` records what the gateway decided for each
(the status, and every record's key and bytes). A difference here is a change of what
the gateway publishes for a real delivery.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator

from schemas.jsonschema import JSON_DIR
from schemas.kinds import EVENT_KINDS
from tests.corpus.golden import GOLDEN, bodies, decide, golden_path


@pytest.mark.parametrize("body", bodies(), ids=lambda p: p.stem)
def test_every_body_decides_as_recorded(body: Path) -> None:
    assert decide(body.read_bytes()) == golden_path(body).read_bytes()


def test_every_body_has_its_golden_file_and_no_file_is_left_over() -> None:
    assert {p.name for p in GOLDEN.iterdir()} == {golden_path(b).name for b in bodies()}


def test_the_corpus_covers_every_kind_and_both_platforms() -> None:
    kinds: set[str] = set()
    objects: set[str] = set()
    for body in bodies():
        objects.add(orjson.loads(body.read_bytes())["object"])
        head = orjson.loads(golden_path(body).read_bytes().split(b"\n", 1)[0])
        kinds.update(head.get("kinds", ()))
    assert kinds == set(EVENT_KINDS)
    assert objects == {"page", "instagram"}


def test_every_recorded_event_matches_the_published_json_schema() -> None:
    schema = orjson.loads((JSON_DIR / "events.json").read_bytes())
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    checked = 0
    for body in bodies():
        for line in golden_path(body).read_bytes().splitlines()[1:]:
            validator.validate(orjson.loads(line.split(b"\t", 1)[1]))
            checked += 1
    assert checked > 100
