"""Run convsync components as child processes, restart the ones that exit, stop them all.

A component that exits while the supervisor is not stopping is restarted after a
jittered, capped exponential backoff (a crash loop costs at most one start per
``backoff_max`` seconds); its backoff starts over once it has stayed up for
``stable_after`` seconds. Every exit and restart is logged, and the supervisor keeps a
small JSON state file (pid, state, restarts, last exit code of every component) that
``convsync status`` shows.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from deploy.processes import pid_alive

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
STATE_FILE: Final = "supervisor.json"

State = Literal["running", "restarting", "stopped"]


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the supervisor dies (SIGKILL, a
    # timeout), the kernel sends the child SIGTERM, so no component is left orphaned.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Component:
    """One child process running ``convsync <args>``, and its restart record."""

    name: str
    args: list[str]
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    # exits in a row without a stable run in between (sets the backoff)
    failures: int = 0
    last_exit_code: int | None = None
    last_exit_at: float | None = None  # wall clock
    started: float = 0.0  # monotonic
    restart_due: float | None = None  # monotonic; set while waiting to restart

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        """Return True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def state(self, stopping: bool) -> State:
        """Return what the supervisor is doing with this component."""
        if self.alive():
            return "running"
        return "stopped" if stopping or self.restart_due is None else "restarting"


def backoff(failures: int, *, initial: float, cap: float) -> float:
    """Return the wait before restart number ``failures`` (1-based) of a component:
    exponential from ``initial``, capped at ``cap``, jittered down by up to a half so
    that components failing together do not restart in step."""
    ceiling = min(cap, initial * 2.0 ** min(failures - 1, 32))
    return ceiling * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret


@dataclass
class Supervisor:
    """Starts components with one environment, restarts those that exit (:meth:`watch`),
    and stops them all (SIGTERM, then SIGKILL)."""

    env: dict[str, str]
    log_dir: Path
    fresh_logs: bool = False
    components: list[Component] = field(default_factory=list)
    # Where the state of every component is kept for `convsync status` (None: nowhere).
    state_file: Path | None = None
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    stable_after: float = 60.0
    stopping: bool = False

    def start(self, name: str, *args: str) -> Component:
        """Start ``convsync ARGS`` as component ``name``; its output goes to a log file."""
        comp = Component(name, list(args), self.log_dir / f"{name}.log")
        self._spawn(comp, fresh=self.fresh_logs)
        self.components.append(comp)
        self.save()
        return comp

    def _spawn(self, comp: Component, *, fresh: bool) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with comp.log_file.open("wb" if fresh else "ab") as out:
            comp.proc = subprocess.Popen(
                [sys.executable, "-m", "cli", *comp.args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        comp.started = time.monotonic()
        log.info("started %s (pid %s): convsync %s", comp.name, comp.pid, " ".join(comp.args))

    def dead(self) -> list[Component]:
        """Return the components that exited."""
        return [c for c in self.components if not c.alive()]

    def watch(self) -> None:
        """Restart what exited unexpectedly, each after its backoff; call it often.

        A component that exited is given a restart time (and the exit is logged); at
        that time it is started again with the same arguments, its log appended to.
        """
        if self.stopping:
            return
        now = time.monotonic()
        changed = False
        for comp in self.components:
            if comp.alive():
                if comp.failures and now - comp.started >= self.stable_after:
                    comp.failures = 0
                continue
            if comp.restart_due is None:
                assert comp.proc is not None
                comp.failures += 1
                comp.last_exit_code = comp.proc.returncode
                comp.last_exit_at = time.time()
                delay = backoff(comp.failures, initial=self.backoff_initial, cap=self.backoff_max)
                comp.restart_due = now + delay
                log.warning(
                    "%s (pid %s) exited with code %s after %.1fs; restarting it in %.1fs",
                    comp.name,
                    comp.pid,
                    comp.last_exit_code,
                    now - comp.started,
                    delay,
                )
                changed = True
            elif now >= comp.restart_due:
                comp.restart_due = None
                comp.restarts += 1
                self._spawn(comp, fresh=False)
                log.warning("restarted %s (restart %d, pid %s)", comp.name, comp.restarts, comp.pid)
                changed = True
        if changed:
            self.save()

    def snapshot(self) -> dict[str, Any]:
        """Return the state written to :attr:`state_file`."""
        return {
            "supervisor_pid": os.getpid(),
            "updated_at": time.time(),
            "stopping": self.stopping,
            "components": [
                {
                    "name": c.name,
                    "pid": c.pid,
                    "state": c.state(self.stopping),
                    "restarts": c.restarts,
                    "last_exit_code": c.last_exit_code,
                    "last_exit_at": c.last_exit_at,
                }
                for c in self.components
            ],
        }

    def save(self) -> None:
        """Write :meth:`snapshot` to :attr:`state_file` (atomically), if there is one."""
        if self.state_file is None:
            return
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_file.with_name(f".{self.state_file.name}.tmp")
            tmp.write_text(json.dumps(self.snapshot(), indent=2) + "\n")
            tmp.replace(self.state_file)
        except OSError as e:
            log.warning("cannot write %s: %s", self.state_file, e)

    def stop(self, *, timeout: float = 20.0) -> None:
        """Ask every component to finish (SIGTERM), wait, then SIGKILL what remains."""
        self.stopping = True
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
        self.save()


def read_state(path: Path) -> dict[str, Any] | None:
    """Return the state a supervisor wrote to ``path`` (None: no file, or unreadable),
    with ``supervisor_running`` telling whether its process still runs."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    pid = data.get("supervisor_pid")
    data["supervisor_running"] = isinstance(pid, int) and pid_alive(pid)
    return data


@dataclass(frozen=True, slots=True)
class Pipeline:
    """The components of one convsync deployment, as `convsync run` and the demo start them."""

    gateway: tuple[str, int]  # webhook listener (host, port)
    admin: tuple[str, int]  # admin API, dashboard and metrics listener (host, port)
    crawler_workers: int = 1
    streams_args: tuple[str, ...] = ()  # extra options of the streams worker
    archiver: bool = False
    relay: bool = False  # `convsync relay` (CONVSYNC_RELAY_URL set: a move from another inbox)


def start_pipeline(sup: Supervisor, pipeline: Pipeline) -> None:
    """Start every component of ``pipeline`` under ``sup``."""
    (host, port), (admin_host, admin_port) = pipeline.gateway, pipeline.admin
    sup.start(
        "gateway",
        "gateway",
        *("--host", host, "--port", str(port)),
        *("--admin-host", admin_host, "--admin-port", str(admin_port)),
    )
    # The gateway publishes deliveries; the mapper makes the events of them.
    sup.start("mapper", "mapper")
    if pipeline.relay:
        sup.start("relay", "relay")
    for i in range(pipeline.crawler_workers):
        sup.start(f"crawler-{i + 1}", "crawler")
    sup.start("materializer", "materialize")
    sup.start("streams", "streams", *pipeline.streams_args)
    if pipeline.archiver:
        sup.start("archiver", "archive")
