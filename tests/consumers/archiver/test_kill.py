"""`convsync archive` as a real process: kill -9 mid-download, several times, then a
restart ends with every file once, none missing, no temp leftovers; its /metrics and
/healthz while it runs; SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from consumers.archiver.storage import KEY
from convsync.settings import Settings
from deploy.ports import free_ports
from deploy.postgres_local import LocalPostgres
from deploy.simulator.media import MediaServer
from deploy.simulator.webhooks import WebhookSender
from tests.consumers.archiver.support import (
    MAX_BYTES,
    Pipeline,
    check_truth,
    files_on_disk,
    on_private_postgres,
    partials,
    webhook_message,
)
from tests.consumers.procs import REPO, settings_env

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.slow]


class ArchiverProcess:
    """One `convsync archive` child; its output goes to ``log``."""

    def __init__(
        self, pipeline: Pipeline, media: MediaServer, media_dir: Path, log: Path, *args: str
    ) -> None:
        self.metrics_port = free_ports()
        env = {
            **settings_env(pipeline.settings),
            "CONVSYNC_MEDIA_DIR": str(media_dir),
            "CONVSYNC_MEDIA_HOSTS": media.base_url.removeprefix("http://"),
            "CONVSYNC_MEDIA_ALLOW_LOOPBACK": "true",
            "CONVSYNC_MEDIA_MAX_BYTES": str(MAX_BYTES),
            "CONVSYNC_MEDIA_RETRY_BASE": "0.05",
            "CONVSYNC_MEDIA_RETRY_MAX": "0.2",
            "CONVSYNC_MEDIA_POLL_INTERVAL": "0.1",
            "CONVSYNC_MEDIA_METRICS_ADDR": f"127.0.0.1:{self.metrics_port}",
        }
        self._out = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "archive", *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as e:
            return int(e.code), e.read()

    def kill(self) -> None:
        """SIGKILL it (unless it exited) and reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._out.close()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._out.close()


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def assert_final_names_are_whole(media_dir: Path, pipeline: Pipeline) -> None:
    """Every final name holds exactly the bytes it names; every stored row's file is
    there (the row is written after the file)."""
    for rel, sha in files_on_disk(media_dir).items():
        assert KEY.fullmatch(rel), rel
        assert rel.endswith(sha), f"{rel} holds other bytes: a half-written file"
    for row in pipeline.rows():
        if row["status"] == "stored":
            assert (media_dir / str(row["storage_key"])).is_file(), row


def test_kill_9_mid_download_then_restart_stores_everything_once(
    pipeline: Pipeline, media: MediaServer, tmp_path: Path
) -> None:
    sender = WebhookSender("secret", seed=11, media_base=media.base_url)
    names = [f"slow-{i}.bin" for i in range(24)] + [f"ok-{i}.jpg" for i in range(8)]
    names += ["same-5-a.jpg", "same-5-b.jpg", "missing-1.jpg", "flaky-1.jpg"]
    pipeline.store([webhook_message(sender, [media.url(n)]) for n in names])
    media_dir = tmp_path / "media"
    rng = random.Random(11)

    mid_download = 0
    for round_ in range(4):
        proc = ArchiverProcess(pipeline, media, media_dir, tmp_path / "archiver.log", "--drain")
        # Kill while the fake CDN is sending it a file.
        wait_for(lambda: media.streaming > 0, 60, "a download in progress")
        time.sleep(rng.uniform(0.0, 0.3))
        mid_download += media.streaming > 0
        proc.kill()
        wait_for(lambda: media.streaming == 0, 30, "the CDN to see the client gone")
        assert_final_names_are_whole(media_dir, pipeline)
        assert proc.proc.returncode == -signal.SIGKILL, f"round {round_}: it had exited"

    assert mid_download >= 3
    assert partials(media_dir), "the killed runs left temp files for the restart to clean"
    last = ArchiverProcess(pipeline, media, media_dir, tmp_path / "archiver.log", "--drain")
    assert last.wait(120) == 0, (tmp_path / "archiver.log").read_text()[-3000:]

    rows = check_truth(pipeline, media_dir)
    stored = sorted({str(r["sha256"]) for r in rows if r["status"] == "stored"})
    assert sorted(files_on_disk(media_dir).values()) == stored  # none missing, none twice
    assert partials(media_dir) == []
    # Every slow file was fetched more than once over the kills, and still stored once.
    assert sum(media.requests[f"/media/slow-{i}.bin"] for i in range(24)) > 24


def test_metrics_healthz_and_sigterm(
    pipeline: Pipeline, media: MediaServer, tmp_path: Path
) -> None:
    sender = WebhookSender("secret", seed=12, media_base=media.base_url)
    names = ["ok-1.jpg", "ok-2.jpg", "missing-3.jpg", "huge-4.mp4"]
    names += [f"slow-m{i}.bin" for i in range(12)]
    pipeline.store([webhook_message(sender, [media.url(n)]) for n in names])
    media_dir = tmp_path / "media"
    proc = ArchiverProcess(pipeline, media, media_dir, tmp_path / "archiver.log")
    try:
        wait_for(lambda: _answers(proc), 30, "the metrics server")
        # Mid-run: slow files still queued.
        wait_for(lambda: b"convsync_archiver_queue_depth " in proc.get("/metrics")[1], 30, "depth")
        wait_for(lambda: _metric(proc, "convsync_archiver_files_stored_total") >= 2, 30, "files")
        status, body = proc.get("/healthz")
        assert (status, json.loads(body)["role"]) == (200, "active")
        wait_for(lambda: _metric(proc, "convsync_archiver_files_stored_total") == 14, 60, "all")
        text = proc.get("/metrics")[1].decode()
        assert _metric(proc, "convsync_archiver_bytes_stored_total") == sum(
            (media_dir / p).stat().st_size for p in files_on_disk(media_dir)
        )
        assert 'convsync_archiver_errors_total{kind="permanent",reason="not_found"} 1.0' in text
        assert 'convsync_archiver_errors_total{kind="permanent",reason="too_large"} 1.0' in text
        wait_for(lambda: _metric(proc, "convsync_archiver_queue_depth") == 0, 30, "depth 0")
    finally:
        proc.proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, (tmp_path / "archiver.log").read_text()[-3000:]
    assert "archiver stopped: 14 downloaded" in (tmp_path / "archiver.log").read_text()


def _answers(proc: ArchiverProcess) -> bool:
    try:
        return proc.get("/healthz")[0] in (200, 503)
    except OSError:
        return False


def _metric(proc: ArchiverProcess, name: str) -> float:
    for line in proc.get("/metrics")[1].decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return -1.0


def test_one_archiver_per_schema_and_a_standby_takes_over(
    pipeline: Pipeline, media: MediaServer, tmp_path: Path
) -> None:
    sender = WebhookSender("secret", seed=13, media_base=media.base_url)
    names = [f"slow-s{i}.bin" for i in range(16)] + ["ok-s.jpg", "missing-s.jpg"]
    pipeline.store([webhook_message(sender, [media.url(n)]) for n in names])
    media_dir = tmp_path / "media"
    first = ArchiverProcess(pipeline, media, media_dir, tmp_path / "first.log")
    wait_for(lambda: _role(first) == "active", 30, "the first to lead")
    second = ArchiverProcess(pipeline, media, media_dir, tmp_path / "second.log", "--drain")
    try:
        wait_for(lambda: _role(second) == "standby", 30, "the second to stand by")
        assert _role(first) == "active"
        wait_for(lambda: media.streaming > 0, 30, "a download in progress")
        first.kill()
        # The lock went with the killed process's connection: the standby takes over.
        wait_for(lambda: _role(second) == "active", 30, "the standby to take over")
        assert second.wait(120) == 0, (tmp_path / "second.log").read_text()[-3000:]
    finally:
        for proc in (first, second):
            proc.kill()
    rows = check_truth(pipeline, media_dir)
    stored = sorted({str(r["sha256"]) for r in rows if r["status"] == "stored"})
    assert sorted(files_on_disk(media_dir).values()) == stored
    assert partials(media_dir) == []


def _role(proc: ArchiverProcess) -> str | None:
    try:
        return str(json.loads(proc.get("/healthz")[1])["role"])
    except (OSError, ValueError):
        return None


def test_postgres_restart_mid_run(
    make_topics: Callable[..., Settings],
    private_postgres: LocalPostgres,
    media: MediaServer,
    tmp_path: Path,
) -> None:
    pipeline = Pipeline(on_private_postgres(make_topics(partitions=3), private_postgres))
    sender = WebhookSender("secret", seed=14, media_base=media.base_url)
    names = [f"slow-p{i}.bin" for i in range(20)] + ["ok-p.jpg", "missing-p.jpg"]
    pipeline.store([webhook_message(sender, [media.url(n)]) for n in names])
    media_dir = tmp_path / "media"
    proc = ArchiverProcess(pipeline, media, media_dir, tmp_path / "archiver.log", "--drain")
    try:
        wait_for(lambda: media.streaming > 0, 30, "a download in progress")
        # Downloads in flight cannot record their files while Postgres is down: the
        # archiver's session ends, and starts over once Postgres answers again.
        private_postgres.stop(mode="immediate")
        time.sleep(2)
        private_postgres.start()
        assert proc.wait(120) == 0, (tmp_path / "archiver.log").read_text()[-3000:]
    finally:
        proc.kill()
    log = (tmp_path / "archiver.log").read_text()
    assert "archiver session ended" in log
    rows = check_truth(pipeline, media_dir)
    stored = sorted({str(r["sha256"]) for r in rows if r["status"] == "stored"})
    assert sorted(files_on_disk(media_dir).values()) == stored
    assert partials(media_dir) == []
