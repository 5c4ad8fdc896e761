"""Run `convsync materialize` as a child process of a test (kill -9 and SIGTERM it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from convsync.settings import Settings
from schemas.envelope import Envelope
from tests.consumers.helpers import produce

REPO = Path(__file__).resolve().parents[2]


def settings_env(settings: Settings) -> dict[str, str]:
    """Return the environment that points a child process at ``settings``."""
    return {
        **os.environ,
        "CONVSYNC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CONVSYNC_DATABASE_URL": settings.database_url.get_secret_value(),
        "CONVSYNC_TOPIC_PREFIX": settings.topic_prefix,
        "CONVSYNC_DB_SCHEMA": settings.db_schema,
        "CONVSYNC_SECRET_KEY": settings.secret_key.get_secret_value(),
        "CONVSYNC_LOG_LEVEL": "INFO",
    }


class MaterializerProcess:
    """One `convsync materialize` child; output goes to ``log``."""

    def __init__(self, settings: Settings, log: Path, *args: str) -> None:
        self.log = log
        self._out = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "materialize", *args],
            cwd=REPO,
            env=settings_env(settings),
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        """SIGKILL it and reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._out.close()

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM it, wait for it, return its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.kill()
            self._out.close()

    def text(self) -> str:
        """Return what it logged so far."""
        return self.log.read_text(errors="replace")


class Trickle(threading.Thread):
    """Produce envelopes in ``chunks`` pieces spread over ``seconds``, in the background."""

    def __init__(
        self, settings: Settings, events: Sequence[Envelope], *, chunks: int, seconds: float
    ) -> None:
        super().__init__(daemon=True)
        self._settings = settings
        self._events = events
        self._chunks = chunks
        self._pause = seconds / chunks
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            size = -(-len(self._events) // self._chunks)
            for i in range(0, len(self._events), size):
                produce(self._settings, self._events[i : i + size])
                time.sleep(self._pause)
        except BaseException as e:
            self.error = e
            raise
