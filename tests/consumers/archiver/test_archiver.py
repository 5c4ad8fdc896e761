"""The archiver against the real stack: every stored attachment ends as a file whose
sha256 is the served bytes' or as a recorded error, content is stored once, forbidden
hosts are never reached, oversized files are refused, permanent errors are not retried."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import msgspec
import pytest

from consumers.archiver.queue import ArchiveQueue, FileInfo, Key
from deploy.simulator.graph_api import GraphWorld
from deploy.simulator.media import MediaServer
from deploy.simulator.webhooks import WebhookSender
from tests.consumers.archiver.support import (
    Pipeline,
    Recorder,
    check_truth,
    crawled_messages,
    files_on_disk,
    media_settings,
    partials,
    webhook_message,
)

pytestmark = pytest.mark.integration


def test_every_attachment_is_stored_with_its_hash_or_has_an_error(
    pipeline: Pipeline, media: MediaServer, tmp_path: Path
) -> None:
    sender = WebhookSender("secret", seed=3, media_base=media.base_url)
    names = [
        "ok-a.jpg", "ok-b.mp4", "slow-c.bin", "flaky-d.pdf", "missing-e.jpg",
        "expired-f.jpg", "huge-g.mp4", "hugechunked-h.mp4", "same-1-i.jpg", "same-1-j.jpg",
    ]  # fmt: skip
    events = [webhook_message(sender, [media.url(n)]) for n in names]
    events.append(webhook_message(sender, [media.url("ok-k.jpg"), media.url("ok-l.png")]))
    events += [
        webhook_message(sender, [sender.media_attachment()["payload"]["url"]]) for _ in range(20)
    ]
    world = GraphWorld.generate(seed=5, conversations=15, textless_ratio=0.5)
    world.media_base = media.base_url
    crawled = crawled_messages(world)
    assert len(crawled) > 10
    pipeline.store(events + crawled)

    media_dir = tmp_path / "media"
    totals = pipeline.archive(media_settings(media, media_dir))

    rows = check_truth(pipeline, media_dir)
    assert len(rows) == len(names) + 2 + 20 + len(crawled)
    assert {r["type"] for r in rows} >= {"image", "video", "file"}
    stored = {str(r["sha256"]) for r in rows if r["status"] == "stored"}
    # Identical content (same-1-i and same-1-j, the shared sticker...) is one file, and
    # nothing else is in the folder.
    on_disk = files_on_disk(media_dir)
    assert sorted(on_disk.values()) == sorted(stored)
    assert all(path.endswith(sha) for path, sha in on_disk.items())
    assert totals.files_new == len(stored) < totals.downloaded + totals.reused
    assert partials(media_dir) == []


def test_a_url_is_fetched_once_and_identical_content_stored_once(
    pipeline: Pipeline, media: MediaServer, tmp_path: Path
) -> None:
    sender = WebhookSender("secret", seed=4, media_base=media.base_url)
    sticker = sender.media_attachment("sticker")["payload"]["url"]
    # One URL in five messages, one message copy under two conversations (bad data),
    # two URLs with the same bytes.
    events = [webhook_message(sender, [sticker]) for _ in range(5)]
    twice = webhook_message(sender, [media.url("ok-twice.jpg")], psid="1111")
    events += [twice, msgspec.structs.replace(twice, psid="2222")]
    events += [webhook_message(sender, [media.url(n)]) for n in ("same-7-x.jpg", "same-7-y.jpg")]
    pipeline.store(events)

    media_dir = tmp_path / "media"
    pipeline.archive(media_settings(media, media_dir))

    check_truth(pipeline, media_dir)
    sticker_path = sticker.split("?")[0].removeprefix(media.base_url)
    assert media.requests[sticker_path] == 1
    assert media.requests["/media/ok-twice.jpg"] == 1
    assert media.requests["/media/same-7-x.jpg"] == media.requests["/media/same-7-y.jpg"] == 1
    assert len(files_on_disk(media_dir)) == 3


def test_a_row_asking_after_a_download_but_before_its_record_shares_it(
    pipeline: Pipeline, media: MediaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The window CI once hit by chance, held open: the first row's record is slow, the
    # second row asks for the URL after the download has ended.
    sender = WebhookSender("secret", seed=7, media_base=media.base_url)
    once = webhook_message(sender, [media.url("ok-window.jpg")], psid="3333")
    pipeline.store([once, msgspec.structs.replace(once, psid="4444")])
    asked: list[str] = []
    lock = threading.Lock()
    by_url, mark_stored = ArchiveQueue.stored_by_url, ArchiveQueue.mark_stored

    def late_lookup(queue: ArchiveQueue, url: str) -> FileInfo | None:
        with lock:
            asked.append(url)
            late = len(asked) > 1
        if late:
            time.sleep(0.5)
        return by_url(queue, url)

    def slow_record(queue: ArchiveQueue, key: Key, info: FileInfo, *, fetched: bool) -> None:
        time.sleep(1.5)
        mark_stored(queue, key, info, fetched=fetched)

    monkeypatch.setattr(ArchiveQueue, "stored_by_url", late_lookup)
    monkeypatch.setattr(ArchiveQueue, "mark_stored", slow_record)
    media_dir = tmp_path / "media"
    pipeline.archive(media_settings(media, media_dir))

    assert len(asked) == 2
    assert media.requests["/media/ok-window.jpg"] == 1
    assert {r["status"] for r in check_truth(pipeline, media_dir)} == {"stored"}


def test_permanent_errors_are_recorded_and_not_retried(
    pipeline: Pipeline, media: MediaServer, tmp_path: Path
) -> None:
    sender = WebhookSender("secret", seed=5, media_base=media.base_url)
    names = ["missing-1.jpg", "expired-2.jpg", "flaky-3.jpg"]
    pipeline.store([webhook_message(sender, [media.url(n)]) for n in names])
    media_dir = tmp_path / "media"
    settings = media_settings(media, media_dir, max_attempts=4)

    pipeline.archive(settings)
    pipeline.archive(settings)  # a second run finds nothing to do

    rows = {
        str(r["url"]).split("?")[0].rsplit("/", 1)[1]: r for r in check_truth(pipeline, media_dir)
    }
    assert (rows["missing-1.jpg"]["error"], rows["missing-1.jpg"]["attempts"]) == ("not_found", 1)
    assert (rows["expired-2.jpg"]["error"], rows["expired-2.jpg"]["attempts"]) == ("forbidden", 1)
    assert media.requests["/media/missing-1.jpg"] == 1
    assert media.requests["/media/expired-2.jpg"] == 1
    # Transient: two 503s, then the file.
    assert (rows["flaky-3.jpg"]["status"], rows["flaky-3.jpg"]["attempts"]) == ("stored", 3)
    assert media.requests["/media/flaky-3.jpg"] == 3


def test_transient_errors_give_up_after_max_attempts(
    pipeline: Pipeline, media: MediaServer, tmp_path: Path
) -> None:
    sender = WebhookSender("secret", seed=6, media_base=media.base_url)
    pipeline.store([webhook_message(sender, [media.url("flaky-9.jpg")])])
    pipeline.archive(media_settings(media, tmp_path / "media", max_attempts=2))
    (row,) = pipeline.rows()
    assert (row["status"], row["error"], row["attempts"]) == ("failed", "server_error", 2)
    assert "gave up after 2 tries" in str(row["error_detail"])
    assert media.requests["/media/flaky-9.jpg"] == 2


def test_oversized_files_are_refused(
    pipeline: Pipeline, media: MediaServer, tmp_path: Path
) -> None:
    sender = WebhookSender("secret", seed=7, media_base=media.base_url)
    names = ["huge-1.mp4", "hugechunked-2.mp4"]
    pipeline.store([webhook_message(sender, [media.url(n)]) for n in names])
    media_dir = tmp_path / "media"
    pipeline.archive(media_settings(media, media_dir))
    rows = pipeline.rows()
    assert [(r["status"], r["error"]) for r in rows] == [("failed", "too_large")] * 2
    assert files_on_disk(media_dir) == {}
    assert partials(media_dir) == []


def test_forbidden_hosts_are_never_requested(
    pipeline: Pipeline, media: MediaServer, recorder: Recorder, tmp_path: Path
) -> None:
    sender = WebhookSender("secret", seed=8)
    rec = f"127.0.0.1:{recorder.port}"
    hostile = [
        f"http://{rec}/latest/meta-data/",  # allowed host, other port
        f"http://localhost:{recorder.port}/x",  # a name for loopback
        f"http://[::ffff:127.0.0.1]:{recorder.port}/x",  # mapped loopback
        f"http://2130706433:{recorder.port}/x",  # loopback as one number
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://10.0.0.1/x",
        f"ftp://{rec}/x",
        f"file:///{tmp_path}/x",
        f"http://{media.base_url.removeprefix('http://')}@{rec}/x",  # userinfo trick
        f"http://{rec}\\@{media.base_url.removeprefix('http://')}/x",  # backslash trick
        # An allowed URL that redirects to the listener.
        media.url("redirect-1") + f"&to=http://{rec}/stolen",
    ]
    pipeline.store([webhook_message(sender, [u]) for u in hostile])
    pipeline.archive(media_settings(media, tmp_path / "media"))

    assert recorder.connections == 0
    rows = pipeline.rows()
    assert len(rows) == len(hostile)
    assert {r["status"] for r in rows} == {"failed"}
    assert {r["error"] for r in rows} <= {
        "host_not_allowed", "address_not_allowed", "scheme_not_allowed", "bad_url",
    }  # fmt: skip
    assert all(r["attempts"] <= 1 for r in rows)
    assert media.requests["/media/redirect-1"] == 1


def test_an_allowed_name_that_resolves_inside_is_not_reached(
    pipeline: Pipeline, media: MediaServer, recorder: Recorder, tmp_path: Path
) -> None:
    # "localhost:<port>" is allowed by name, but loopback addresses are not (the
    # production default): the resolver drops them, nothing connects.
    sender = WebhookSender("secret", seed=9)
    pipeline.store([webhook_message(sender, [f"http://localhost:{recorder.port}/x"])])
    settings = media_settings(
        media, tmp_path / "media", hosts=[f"localhost:{recorder.port}"], allow_loopback=False
    )
    pipeline.archive(settings)
    assert recorder.connections == 0
    (row,) = pipeline.rows()
    assert (row["status"], row["error"]) == ("failed", "address_not_allowed")


def test_attachments_without_a_url_are_recorded(
    pipeline: Pipeline, media: MediaServer, tmp_path: Path
) -> None:
    sender = WebhookSender("secret", seed=10)
    pipeline.store([webhook_message(sender, [None, media.url("ok-z.jpg")])])
    pipeline.archive(media_settings(media, tmp_path / "media"))
    rows = pipeline.rows()
    assert [(r["idx"], r["status"], r["error"]) for r in rows] == [
        (0, "failed", "no_url"),
        (1, "stored", None),
    ]
