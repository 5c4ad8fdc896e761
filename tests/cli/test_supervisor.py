"""The supervisor of `convsync run` and the demo restarts what exits, and says so."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.supervisor import STATE_FILE, Supervisor, backoff, read_state
from convsync.settings import Settings
from deploy.ports import free_ports
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema

REPO = Path(__file__).resolve().parents[2]


def test_backoff_is_exponential_capped_and_jittered() -> None:
    firsts = {backoff(1, initial=1.0, cap=60.0) for _ in range(50)}
    assert all(0.5 <= d <= 1.0 for d in firsts) and len(firsts) > 1
    assert all(2.0 <= backoff(3, initial=1.0, cap=60.0) <= 4.0 for _ in range(50))
    # a crash loop of any length: never past the cap, never an overflow
    assert all(30.0 <= backoff(n, initial=1.0, cap=60.0) <= 60.0 for n in (7, 100, 10**6))


def test_a_component_that_exits_is_restarted_with_backoff_and_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / STATE_FILE
    # `convsync env` with no stack exits 1 at once: a component that keeps failing.
    sup = Supervisor({}, tmp_path / "logs", state_file=state, backoff_initial=0.2, backoff_max=0.4)
    caplog.set_level(logging.INFO, logger="cli.supervisor")
    try:
        comp = sup.start("flaky", "env", "--state-dir", str(tmp_path / "no-stack"))
        deadline = time.monotonic() + 60
        while comp.restarts < 3:
            assert time.monotonic() < deadline, "not restarted three times"
            sup.watch()
            time.sleep(0.05)
        snap = read_state(state)
    finally:
        sup.stop(timeout=10)
    assert snap is not None and snap["supervisor_running"]
    [entry] = snap["components"]
    assert entry["name"] == "flaky" and entry["restarts"] >= 3
    assert entry["last_exit_code"] == 1
    exits = [r for r in caplog.records if "exited with code 1" in r.getMessage()]
    restarts = [r for r in caplog.records if r.getMessage().startswith("restarted flaky")]
    assert len(exits) >= 3 and len(restarts) >= 3
    # stopped: no more restarts, and the file says so
    sup.watch()
    final = json.loads(state.read_text())
    assert final["stopping"] and final["components"][0]["state"] == "stopped"


def test_a_component_that_runs_is_left_alone(tmp_path: Path) -> None:
    sup = Supervisor({}, tmp_path / "logs", backoff_initial=0.1, backoff_max=0.1)
    try:
        comp = sup.start("steady", "--help")  # exits 0 at once: that is an exit too
        comp.proc.wait(30)  # type: ignore[union-attr]
        sup.watch()
        assert comp.restart_due is not None and comp.last_exit_code == 0
    finally:
        sup.stop(timeout=10)
    assert comp.restarts == 0, "restarted after stop"


@pytest.mark.integration
def test_status_shows_the_restarts(
    tmp_path: Path, make_topics: MakeTopics, make_schema: MakeSchema
) -> None:
    settings = make_schema(base=make_topics(partitions=1))
    sup = Supervisor({}, tmp_path / "logs", state_file=tmp_path / STATE_FILE)
    sup.backoff_initial = sup.backoff_max = 0.05
    try:
        comp = sup.start("flaky", "env", "--state-dir", str(tmp_path / "no-stack"))
        while comp.restarts < 2:
            sup.watch()
            time.sleep(0.05)
        out = subprocess.run(
            [sys.executable, "-m", "cli", "status", "--json", "--state-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=REPO,
            env={**os.environ, **env_of(settings)},
        )
    finally:
        sup.stop(timeout=10)
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(out.stdout)
    [entry] = data["supervisor"]["components"]
    assert entry["name"] == "flaky" and entry["restarts"] >= 2 and entry["last_exit_code"] == 1


def env_of(settings: Settings) -> dict[str, str]:
    return {
        "CONVSYNC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CONVSYNC_DATABASE_URL": settings.database_url.get_secret_value(),
        "CONVSYNC_TOPIC_PREFIX": settings.topic_prefix,
        "CONVSYNC_DB_SCHEMA": settings.db_schema,
        "CONVSYNC_PARTITIONS": str(settings.partitions),
    }


@pytest.mark.integration
@pytest.mark.slow
def test_convsync_run_restarts_a_killed_component(
    tmp_path: Path, make_topics: MakeTopics, make_schema: MakeSchema
) -> None:
    settings = make_schema(base=make_topics(partitions=2))
    state = tmp_path / "state"
    env = {
        **os.environ,
        **env_of(settings),
        "CONVSYNC_APP_SECRET": "run-test-app-secret-8d1f",
        "CONVSYNC_VERIFY_TOKEN": "run-test-verify-7c2e",
    }
    run_log = (tmp_path / "run.log").open("wb")
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "run",
            "--crawler-workers",
            "1",
            "--gateway-port",
            str(free_ports()),
            "--state-dir",
            str(state),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=run_log,
    )
    try:
        first = wait_component(state, "materializer", lambda c: c["state"] == "running")
        time.sleep(2)
        os.killpg(first["pid"], signal.SIGKILL)
        again = wait_component(
            state,
            "materializer",
            lambda c: c["restarts"] == 1 and c["state"] == "running" and c["pid"] != first["pid"],
        )
        assert again["last_exit_code"] == -signal.SIGKILL
        assert run.poll() is None, "convsync run exited"
    finally:
        run.send_signal(signal.SIGTERM)
        run.wait(60)
        run_log.close()
    text = (tmp_path / "run.log").read_text(errors="replace")
    assert "materializer (pid" in text and "restarting it in" in text, text[-3000:]
    assert "restarted materializer (restart 1" in text


def wait_component(state: Path, name: str, ok: object, timeout: float = 90.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        snap = read_state(state / STATE_FILE)
        if snap is not None:
            for comp in snap["components"]:
                if comp["name"] == name and ok(comp):  # type: ignore[operator]
                    return dict(comp)
        assert time.monotonic() < deadline, f"{name} never got there: {snap}"
        time.sleep(0.2)
