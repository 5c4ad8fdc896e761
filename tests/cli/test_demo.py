"""`convsync demo` end to end (small world): Postgres must match the simulator's truth."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from psycopg import sql

from cli.demo.media import compare_media
from cli.demo.options import DemoOptions
from cli.demo.run import demo_settings
from convsync.db import connect
from convsync.settings import Settings
from deploy.simulator.graph_api import GraphWorld

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_small_demo_matches_the_truth(stack_settings: Settings) -> None:
    state = os.environ.get("CONVSYNC_STATE_DIR", str(REPO / ".convsync"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "demo",
            "--pages",
            "2",
            "--conversations",
            "60",
            "--webhooks",
            "120",
            "--timeout",
            "240",
            "--state-dir",
            state,
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "MATCH" in out
    assert "duplicates" in out
    assert "attachments stored / failed / expected" in out
    # The Instagram account's conversations were crawled through its page, and compared.
    ig = re.search(r"Instagram messages sent / crawled / conversations stored\W+(\d+) / (\d+)", out)
    assert ig is not None and int(ig[1]) > 0 and int(ig[2]) > 0, out[-4000:]
    # Guests of the chat plugin (a user_ref, no PSID) are conversations of their own.
    guests = re.search(
        r"guests \(user_ref, no PSID\): conversations sent / stored\W+(\d+) / (\d+)", out
    )
    assert guests is not None and int(guests[1]) > 0 and guests[1] == guests[2], out[-4000:]
    # Every user with a PSID (webhook-only ones too) is a contact named as Meta names them.
    contacts = re.search(r"users with a PSID\W+(\d+) / (\d+) \((\d+) unexpected", out)
    assert contacts is not None, out[-4000:]
    assert int(contacts[2]) > 0 and contacts[1] == contacts[2] and contacts[3] == "0"
    # Webhooks Meta never delivered came back through reconciliation, from the crawler.
    gap = re.search(r"never delivered / filled by reconciliation\W+(\d+) / (\d+)", out)
    assert gap is not None, out[-4000:]
    assert int(gap[1]) > 0 and gap[1] == gap[2]
    # A page's token expired: the page went to needs_reconnect, a new token set through
    # the admin API brought it back, and its paused crawl brought what was written meanwhile.
    assert re.search(r"page \d+ went to needs_reconnect in [\d.]+s", out), out[-4000:]
    back = re.search(r"replaced via the admin API: messages stored\W+(\d+) / (\d+)", out)
    assert back is not None, out[-4000:]
    assert int(back[2]) > 0 and back[1] == back[2]
    # The verdict on media can fail: a file changed on disk and a wrong outcome are seen.
    settings = demo_settings(stack_settings)
    media_dir = Path(state) / "demo-media"
    opts = DemoOptions()
    world = GraphWorld.generate(
        seed=opts.seed, pages=2, conversations=60, max_messages=opts.max_messages
    )
    with connect(settings) as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT url, storage_key FROM {}.attachments WHERE status = 'stored' LIMIT 2"
            ).format(sql.Identifier(settings.db_schema))
        ).fetchall()
        assert len(rows) == 2, "the small demo stores attachments"
        world.media_base = "{0.scheme}://{0.netloc}".format(urlsplit(str(rows[0][0])))
        assert compare_media(settings, world, media_dir).ok
        (media_dir / str(rows[0][1])).write_bytes(b"not the file")
        conn.execute(
            sql.SQL("UPDATE {}.attachment_files SET sha256 = %s WHERE url = %s").format(
                sql.Identifier(settings.db_schema)
            ),
            ("0" * 64, rows[1][0]),
        )
        conn.commit()
    verdict = compare_media(settings, world, media_dir)
    assert (verdict.bad_files, verdict.wrong, verdict.ok) == (1, 1, False)
