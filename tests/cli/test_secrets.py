"""Every entry point that sets up logging redacts the same secrets, the stack's too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from convsync.settings import Settings
from deploy._files import ensure_secret
from deploy.stack import KAFKA_PASSWORD_FILE, STACK_FILE, StackInfo

REPO = Path(__file__).resolve().parents[2]


def test_the_cli_and_the_gateway_redact_the_same_secrets() -> None:
    from cli.main import _secrets
    from producers.webhook.server import secrets_of

    settings = Settings(
        database_url="postgresql://u:db-pw-7@h:1/d",
        kafka_extra={"sasl.password": "kafka-pw-8"},
    )
    assert {"db-pw-7", "kafka-pw-8"} <= set(_secrets(settings)) == set(secrets_of(settings))


def test_the_stack_passwords_are_redacted_when_read_from_the_state_folder(tmp_path: Path) -> None:
    # A stack folder as `convsync up --sasl` leaves it (no server needed to read it).
    info = StackInfo(
        state_dir=str(tmp_path),
        brokers=1,
        kafka_port=1,
        kafka_bootstrap="127.0.0.1:1",
        pg_port=2,
        database_url="postgresql://convsync@127.0.0.1:2/convsync",
        topic_prefix="convsync",
        partitions=1,
        replication_factor=1,
        sasl=True,
    )
    (tmp_path / STACK_FILE).write_text(json.dumps(asdict(info)))
    pg_password = ensure_secret(tmp_path / "postgres.password")
    kafka_password = ensure_secret(tmp_path / KAFKA_PASSWORD_FILE)
    code = (
        "import logging, sys\n"
        "from cli.main import _root\n"
        "_root(log_level='INFO', log_format='text')\n"
        "logging.getLogger('t').warning('pg %s kafka %s', *sys.argv[1:])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVSYNC_")}
    proc = subprocess.run(
        [sys.executable, "-c", code, pg_password, kafka_password],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**env, "CONVSYNC_STATE_DIR": str(tmp_path)},
        cwd=REPO,
    )
    out = proc.stdout + proc.stderr
    assert "pg *** kafka ***" in out
    assert pg_password not in out and kafka_password not in out
