"""The demo's media: the archiver's settings for the fake CDN, and its verdict.

Crawled messages without text carry an attachment whose URL is on the simulator's CDN
(``deploy/simulator/media.py``), which decides from the URL what the archiver must end
with: a stored file of a known sha256, or a failure with a known reason (missing,
expired). The demo runs the archiver and compares the ``attachments`` view, and the
files on disk, with that truth.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import sql

from consumers.archiver.settings import ArchiverSettings
from convsync.db import connect
from convsync.settings import Settings
from deploy.ports import free_ports
from deploy.simulator.graph_api import GraphWorld
from deploy.simulator.media import expected_outcome


def media_env(media_dir: Path, cdn_base: str) -> dict[str, str]:
    """Return the archiver's environment for the fake CDN at ``cdn_base``: only its host
    allowed (a loopback address, allowed here only), short retry delays."""
    return {
        "CONVSYNC_MEDIA_DIR": str(media_dir),
        "CONVSYNC_MEDIA_HOSTS": cdn_base.removeprefix("http://"),
        "CONVSYNC_MEDIA_ALLOW_LOOPBACK": "true",
        "CONVSYNC_MEDIA_RETRY_BASE": "0.2",
        "CONVSYNC_MEDIA_RETRY_MAX": "2",
        "CONVSYNC_MEDIA_POLL_INTERVAL": "0.2",
        "CONVSYNC_MEDIA_METRICS_ADDR": f"127.0.0.1:{free_ports()}",
    }


def expected_media(world: GraphWorld) -> dict[tuple[str, str, str], str]:
    """Return ``{(page, psid, mid): url}`` of every attachment a full crawl stores."""
    out: dict[tuple[str, str, str], str] = {}
    for page, conversations in world.conversations.items():
        for conv in conversations:
            if conv.psid is None:
                continue
            for i, m in enumerate(conv.messages):
                if m.malformed or not world.detailed(i) or m.text is not None:
                    continue
                fields = world.media_json(m.mid)
                data = fields.get("image_data") or fields.get("video_data") or {}
                out[(page, conv.psid, m.mid)] = str(data.get("url") or fields["file_url"])
    return out


@dataclass(frozen=True, slots=True)
class MediaComparison:
    """The attachments view and the media folder against the fake CDN's truth."""

    expected: int
    stored: int
    failed: int
    pending: int  # not archived yet (status NULL or pending)
    missing: int  # expected attachments absent from the view
    unexpected: int  # attachments in the view the truth does not have
    wrong: int  # outcome (status, sha256 or error) other than the CDN's truth
    bad_files: int  # stored rows whose file is absent or of another content

    @property
    def ok(self) -> bool:
        return not (self.pending or self.missing or self.unexpected or self.wrong) and (
            self.bad_files == 0
        )


def pending_media(settings: Settings) -> int:
    """Return how many attachments with a URL the archiver has not finished."""
    with connect(settings) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT count(*) FROM {}.attachments WHERE url IS NOT NULL"
                " AND (status IS NULL OR status = 'pending')"
            ).format(sql.Identifier(settings.db_schema))
        ).fetchone()
    return int(str(row[0])) if row else 0


def compare_media(settings: Settings, world: GraphWorld, media_dir: Path) -> MediaComparison:
    """Compare the ``attachments`` view and ``media_dir`` with the CDN's truth (the
    archiver ran with its default size limit)."""
    max_bytes = int(ArchiverSettings.model_fields["max_bytes"].default)
    with connect(settings) as conn:
        cur = conn.execute(
            sql.SQL(
                "SELECT page_id, psid, mid, url, status, sha256, size, storage_key, error"
                " FROM {}.attachments WHERE url IS NOT NULL"
            ).format(sql.Identifier(settings.db_schema))
        )
        names = [d.name for d in cur.description or []]
        rows: list[dict[str, Any]] = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    truth = expected_media(world)
    seen = {(str(r["page_id"]), str(r["psid"]), str(r["mid"])): r for r in rows}
    wrong = bad_files = 0
    for row in rows:
        outcome = expected_outcome(str(row["url"]), max_bytes=max_bytes)
        if row["status"] not in ("stored", "failed"):
            continue
        if (row["status"], row["error"] or row["sha256"]) != outcome:
            wrong += 1
        elif row["status"] == "stored":
            path = media_dir / str(row["storage_key"])
            data = path.read_bytes() if path.is_file() else b""
            if hashlib.sha256(data).hexdigest() != row["sha256"] or len(data) != row["size"]:
                bad_files += 1
    return MediaComparison(
        expected=len(truth),
        stored=sum(1 for r in rows if r["status"] == "stored"),
        failed=sum(1 for r in rows if r["status"] == "failed"),
        pending=sum(1 for r in rows if r["status"] not in ("stored", "failed")),
        missing=len(truth.keys() - seen.keys()),
        unexpected=len(seen.keys() - truth.keys()),
        wrong=wrong,
        bad_files=bad_files,
    )
