"""Run convsync components as child processes, restart-free, and stop them cleanly."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the supervisor dies (SIGKILL, a
    # timeout), the kernel sends the child SIGTERM, so no component is left orphaned.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Component:
    """One child process running ``convsync <args>``."""

    name: str
    args: list[str]
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        """Return True while the process runs."""
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Supervisor:
    """Starts components with one environment and stops them all (SIGTERM, then SIGKILL)."""

    env: dict[str, str]
    log_dir: Path
    fresh_logs: bool = False
    components: list[Component] = field(default_factory=list)

    def start(self, name: str, *args: str) -> Component:
        """Start ``convsync ARGS`` as component ``name``; its output goes to a log file."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        comp = Component(name, list(args), self.log_dir / f"{name}.log")
        with comp.log_file.open("wb" if self.fresh_logs else "ab") as out:
            comp.proc = subprocess.Popen(
                [sys.executable, "-m", "cli", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        log.info("started %s (pid %s): convsync %s", name, comp.pid, " ".join(args))
        self.components.append(comp)
        return comp

    def dead(self) -> list[Component]:
        """Return the components that exited."""
        return [c for c in self.components if not c.alive()]

    def stop(self, *, timeout: float = 20.0) -> None:
        """Ask every component to finish (SIGTERM), wait, then SIGKILL what remains."""
        for comp in reversed(self.components):
            if comp.alive() and comp.proc is not None:
                comp.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for comp in self.components:
            if comp.proc is None:
                continue
            try:
                comp.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", comp.name, timeout)
                comp.proc.kill()
                comp.proc.wait(timeout=10)
