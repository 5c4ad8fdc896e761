"""A client nobody here wrote (Debian's kcat) reads the change stream; every record is
valid JSON that matches the published JSON Schema."""

from __future__ import annotations

import json
import random
import shutil
import subprocess

import pytest
from jsonschema import Draft202012Validator

from convsync.kafka import make_producer
from schemas.jsonschema import JSON_DIR
from tests.fixtures.kafka import MakeTopics
from tests.streams.conftest import StartWorker, read_changes
from tests.streams.events import conversation_events, produce
from tests.streams.test_app import complete
from tests.streams.test_change import fold_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KCAT = shutil.which("kcat") or "/usr/bin/kcat"


def test_kcat_reads_schema_valid_json(make_topics: MakeTopics, start_worker: StartWorker) -> None:
    settings = make_topics(partitions=3)
    evs = conversation_events(random.Random(5), pages=2, users=5, messages=150)
    _, want = fold_all(evs)
    produce(make_producer(settings), settings.topic("events"), evs)
    worker = start_worker(settings)
    read_changes(settings, until=complete(want), timeout=90, worker=worker)

    out = subprocess.run(
        [
            KCAT,
            "-b",
            settings.kafka_bootstrap,
            "-C",
            "-t",
            settings.topic("conversations"),
            "-o",
            "beginning",
            "-e",
            "-q",
            "-J",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    lines = out.stdout.decode().splitlines()
    assert len(lines) == len(want)

    schema = json.loads((JSON_DIR / "conversations.json").read_text())
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    keys = set()
    for line in lines:
        envelope = json.loads(line)
        record = json.loads(envelope["payload"])
        errors = sorted(validator.iter_errors(record), key=str)
        assert not errors, f"{record}: {errors[0].message}"
        assert envelope["key"] == record["key"] == f"{record['page_id']}:{record['psid']}"
        keys.add(record["key"])
    assert keys == {r.key for r in want}

    # A record that breaks the contract is rejected by the same schema.
    bad = json.loads(json.loads(lines[0])["payload"])
    bad["changes"] = ["teleported"]
    assert not validator.is_valid(bad)
