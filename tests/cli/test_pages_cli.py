"""``convsync pages add|list|remove``: the token from stdin, a file or the environment,
never from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from convsync.settings import Settings
from tests.fixtures.postgres import MakeSchema

pytestmark = pytest.mark.integration

SECRET = "EAAG-cli-token-9876543210"


def convsync(
    settings: Settings, *args: str, stdin: str = "", **env: str
) -> subprocess.CompletedProcess[str]:
    full = {
        **os.environ,
        "CONVSYNC_DATABASE_URL": settings.database_url.get_secret_value(),
        "CONVSYNC_DB_SCHEMA": settings.db_schema,
        "CONVSYNC_SECRET_KEY": settings.secret_key.get_secret_value(),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "cli", "pages", *args],
        input=stdin,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_add_list_remove(make_schema: MakeSchema, tmp_path: Path) -> None:
    settings = make_schema()
    r = convsync(settings, "add", "2001", "--token-stdin", "--name", "Shop", stdin=SECRET + "\n")
    assert r.returncode == 0, r.stderr
    token_file = tmp_path / "token"
    token_file.write_text(SECRET + "\n")
    r = convsync(
        settings, "add", "2002", "--token-file", str(token_file), "--platform", "instagram"
    )
    assert r.returncode == 0, r.stderr
    r = convsync(settings, "add", "2003", "--token-env", "MY_TOKEN", MY_TOKEN=SECRET)
    assert r.returncode == 0, r.stderr
    listed = convsync(settings, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(p["page_id"], p["platform"], p["status"]) for p in rows] == [
        ("2001", "messenger", "active"),
        ("2002", "instagram", "active"),
        ("2003", "messenger", "active"),
    ]
    assert SECRET not in listed.stdout
    assert convsync(settings, "remove", "2002").returncode == 0
    assert convsync(settings, "remove", "2002").returncode == 1
    listed = convsync(settings, "list", "--json")
    assert [json.loads(line)["page_id"] for line in listed.stdout.splitlines()] == ["2001", "2003"]


def test_no_token_on_the_command_line(make_schema: MakeSchema) -> None:
    settings = make_schema()
    # a token as an argument is a usage error, and nothing is stored
    r = convsync(settings, "add", "2001", SECRET)
    assert r.returncode == 2
    r = convsync(settings, "add", "2001")
    assert r.returncode == 2 and "--token-stdin" in r.stdout + r.stderr
    r = convsync(settings, "add", "abc", "--token-stdin", stdin=SECRET)
    assert r.returncode == 2 and "numeric" in r.stderr
    assert convsync(settings, "list", "--json").stdout == ""
