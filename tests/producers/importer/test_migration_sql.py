"""docs/migration.md's export from a Supabase inbox: its CREATE TABLEs build the old schema
in the real Postgres, its query runs through psql as documented, and `convsync import` of
the output stores exactly the old inbox's messages."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from convsync.db import connect
from convsync.settings import Settings
from tests.consumers.helpers import conversations, stored_rows
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema
from tests.producers.importer.test_import import convsync_import, materialize

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[3] / "docs" / "migration.md"


def doc_sql() -> tuple[str, str]:
    """Return the old schema's CREATE TABLEs and the export query, as the doc gives them."""
    text = DOC.read_text()
    section = text[text.index("## Exporting from a Supabase inbox") :]
    schema = re.search(r"```sql\n(.*?)```", section, re.S)
    export = re.search(r"<!-- export-sql -->\n```sql\n(.*?)```\n<!-- /export-sql -->", text, re.S)
    assert schema is not None and export is not None, "docs/migration.md lost its SQL blocks"
    return schema.group(1), export.group(1)


@pytest.fixture
def old_inbox(stack_settings: Settings) -> Iterator[str]:
    """A schema shaped like the doc's Supabase inbox, with a few conversations in it."""
    name = f"old_{uuid.uuid4().hex[:12]}"
    create, _ = doc_sql()
    with connect(stack_settings) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(name)))
        conn.execute(create.encode())
        fb, ig = (
            conn.execute(
                "INSERT INTO conversations (page_id, platform, participant_id) "
                "VALUES (%s, %s, %s) RETURNING id",
                args,
            ).fetchone()[0]  # type: ignore[index]
            for args in (("pg1", "facebook", "u1"), ("ig1", "instagram", "igu1"))
        )
        rows = [
            (fb, "message", "m_1", False, "hello", None, "2024-03-01T12:00:00.123Z"),
            (fb, "message", "m_2", True, 'a\nb "q" back\\slash é 🙂', None, "2024-03-01T12:01:00Z"),
            (fb, "message", "m_3", False, None,
             '[{"type": "image", "payload": {"url": "https://cdn.test/x.jpg"}},'
             ' {"type": "file", "payload": {"url": "https://cdn.test/y.pdf", "title": "y.pdf"}}]',
             "2024-03-01T12:02:00Z"),
            (fb, "message", "m_5", False, "odd attachments", '{"not": "an array"}',
             "2024-03-01T12:03:00Z"),
            # Not history to import: a read, a reaction, a message with no id.
            (fb, "read", None, False, None, None, "2024-03-01T12:04:00Z"),
            (fb, "reaction", "m_1", True, None, None, "2024-03-01T12:05:00Z"),
            (fb, "message", None, False, "no id", None, "2024-03-01T12:06:00Z"),
            (ig, "message", "aWdf_4", False, "hi ig", None, "2024-03-02T08:00:00.456789Z"),
        ]  # fmt: skip
        for row in rows:
            conn.execute(
                "INSERT INTO events (conversation_id, type, message_id, is_echo, body,"
                " attachments, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                row,
            )
    yield name
    with connect(stack_settings) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def psql_export(settings: Settings, schema: str, out: Path) -> None:
    """Run the doc's export with psql, its connection in the environment (as documented)."""
    psql = shutil.which("psql")
    assert psql is not None, "psql is missing: run `bash deploy/bootstrap.sh`"
    _, export = doc_sql()
    query = out.with_suffix(".sql")
    query.write_text(export)
    info = psycopg.conninfo.conninfo_to_dict(settings.database_url.get_secret_value())
    env = {
        **os.environ,
        "PGHOST": str(info.get("host", "")),
        "PGPORT": str(info.get("port", "")),
        "PGUSER": str(info.get("user", "")),
        "PGPASSWORD": str(info.get("password", "")),
        "PGDATABASE": str(info.get("dbname", "")),
        "PGOPTIONS": f"-c search_path={schema}",
    }
    with out.open("wb") as stream:
        done = subprocess.run(
            [psql, "-AtX", "-v", "ON_ERROR_STOP=1", "-f", str(query)],
            env=env,
            stdout=stream,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()


def test_the_documented_export_imports_every_message_of_the_old_inbox(
    make_topics: MakeTopics, make_schema: MakeSchema, old_inbox: str, tmp_path: Path
) -> None:
    settings = make_schema(base=make_topics(partitions=3))
    out = tmp_path / "history.jsonl"
    psql_export(settings, old_inbox, out)
    assert len(out.read_bytes().splitlines()) == 5

    done = convsync_import(settings, out)
    assert done.returncode == 0, done.stderr + done.stdout
    materialize(settings)

    by_mid = {r["mid"]: r for r in stored_rows(settings).values()}
    assert set(by_mid) == {"m_1", "m_2", "m_3", "m_5", "aWdf_4"}
    assert all(r["source"] == "import" and r["kind"] == "message" for r in by_mid.values())
    assert by_mid["m_1"]["text"] == "hello"
    assert by_mid["m_1"]["occurred_at"] == 1_709_294_400_123
    assert by_mid["m_1"]["direction"] == "inbound"
    assert by_mid["m_2"]["text"] == 'a\nb "q" back\\slash é 🙂'
    assert by_mid["m_2"]["direction"] == "outbound"
    assert by_mid["m_3"]["text"] is None
    assert by_mid["m_3"]["attrs"] == {
        "attachments": [
            {"type": "image", "url": "https://cdn.test/x.jpg"},
            {"type": "file", "url": "https://cdn.test/y.pdf", "title": "y.pdf"},
        ]
    }
    assert "attachments" not in by_mid["m_5"]["attrs"]
    assert by_mid["aWdf_4"]["occurred_at"] == 1_709_366_400_456  # microseconds cut to ms
    assert by_mid["aWdf_4"]["payload"]["platform"] == "instagram"

    counts = {k: c["message_count"] for k, c in conversations(settings).items()}
    assert counts == {("pg1", "u1"): 4, ("ig1", "igu1"): 1}
