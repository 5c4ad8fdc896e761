"""The convsync components of a fault scenario as child processes, and their secrets.

:class:`Pipeline` starts, restarts, kills and stops the gateway, mapper, materializer,
streams, crawler and media archiver (each under a :class:`cli.supervisor.Supervisor`,
with its own log), serves the fake Graph API of a scenario's world (and its media CDN),
revives a mapper its watchdog stopped, and measures resident memory (:func:`rss_kb`).
The suite's secrets (``SECRET``, ``VERIFY_TOKEN``, ``ADMIN_TOKEN``, every one handed out
in ``SECRETS_SEEN``) live here because the pipeline hands them to the components.
Separate from the webhook traffic (:mod:`tests.fault.traffic`) and from settling,
comparing and results (:mod:`tests.fault.harness`).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
from collections import Counter
from pathlib import Path

from cli.demo import GraphThread, wait_ready
from cli.demo.media import media_env
from cli.supervisor import Component, Supervisor
from convsync.settings import Settings
from deploy.ports import free_ports
from deploy.simulator.graph_api import GraphWorld, token_for
from producers.webhook.mapper import STUCK_EXIT
from tests.fault.settle import mapper_group

REPO = Path(__file__).resolve().parents[2]
SECRET = "fault-app-secret-7c1e94b2d0"
VERIFY_TOKEN = "fault-verify-token-3a9f"
ADMIN_TOKEN = secrets.token_urlsafe(32)


# Every secret any scenario of this session handed to a component: no log may hold one.
SECRETS_SEEN: set[str] = {SECRET, VERIFY_TOKEN, ADMIN_TOKEN}


def rss_kb(pid: int) -> int:
    """Return the resident set of ``pid`` and all its descendants, in kB (0 if gone)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


class Pipeline:
    """The convsync components of one scenario, each a child process with its own log."""

    def __init__(
        self,
        settings: Settings,
        log_dir: Path,
        *,
        world: GraphWorld | None = None,
        group: str | None = None,
        extra_env: dict[str, str] | None = None,
        env_for: dict[str, dict[str, str]] | None = None,
        media: bool = False,
    ) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.world = world
        self.group = group or f"{settings.topic_prefix}-materializer"
        # With ``media``, attachments point at a fake CDN the archiver reads.
        self.graph = GraphThread(world, media=media) if world is not None else None
        self.gateway_port = free_ports()
        self.admin_port = free_ports()
        self.streams_port = free_ports()
        self.extra_env = extra_env or {}
        self.env_for = env_for or {}
        self.sups: dict[str, Supervisor] = {}
        self._halt = threading.Event()
        self._reviver: threading.Thread | None = None
        self.comps: dict[str, Component] = {}
        self.restarts: Counter[str] = Counter()
        self.database_url = settings.database_url.get_secret_value()
        self.kafka_bootstrap = settings.kafka_bootstrap
        SECRETS_SEEN.update(self.secrets())

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def admin_url(self) -> str:
        """The gateway's private listener: admin API, dashboard, metrics."""
        return f"http://127.0.0.1:{self.admin_port}"

    def page_tokens(self) -> dict[str, str]:
        return {p: token_for(p) for p in (self.world.page_ids if self.world else [])}

    def secrets(self) -> list[str]:
        """Every secret that must never appear in a log."""
        key = self.settings.secret_key.get_secret_value()
        return [
            SECRET,
            VERIFY_TOKEN,
            ADMIN_TOKEN,
            *self.page_tokens().values(),
            *([key] if key else []),
        ]

    def __enter__(self) -> Pipeline:
        if self.graph is not None:
            self.graph.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self, name: str) -> dict[str, str]:
        env = {
            "CONVSYNC_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "CONVSYNC_DATABASE_URL": self.database_url,
            "CONVSYNC_TOPIC_PREFIX": self.settings.topic_prefix,
            "CONVSYNC_DB_SCHEMA": self.settings.db_schema,
            "CONVSYNC_PARTITIONS": str(self.settings.partitions),
            "CONVSYNC_APP_SECRET": SECRET,
            "CONVSYNC_VERIFY_TOKEN": VERIFY_TOKEN,
            "CONVSYNC_ADMIN_TOKEN": ADMIN_TOKEN,
            "CONVSYNC_PAGE_TOKENS": json.dumps(self.page_tokens()),
            # Page tokens are kept encrypted in Postgres: the crawler needs the key.
            "CONVSYNC_SECRET_KEY": self.settings.secret_key.get_secret_value(),
            "CONVSYNC_CRAWL_CALLS_PER_SECOND": "200",
            "CONVSYNC_CRAWL_GROUP": f"{self.settings.topic_prefix}-crawler",
            "CONVSYNC_MAPPER_METRICS_ADDR": "off",
            "CONVSYNC_STATE_DIR": str(self.log_dir / "state"),
            "CONVSYNC_LOG_LEVEL": "INFO",
            **self.extra_env,
            **self.env_for.get(name, {}),
        }
        if self.graph is not None:
            env["CONVSYNC_GRAPH_URL"] = self.graph.url
        if name == "archiver":
            assert self.world is not None and self.world.media_base is not None, "media=True"
            env |= media_env(self.media_dir, self.world.media_base)
        return env

    @property
    def media_dir(self) -> Path:
        """Where the archiver keeps the attachments' files."""
        return self.log_dir / "media"

    def args(self, name: str) -> list[str]:
        if name == "gateway":
            return [
                *("gateway", "--host", "127.0.0.1", "--port", str(self.gateway_port)),
                *("--admin-host", "127.0.0.1", "--admin-port", str(self.admin_port)),
            ]
        if name == "materializer":
            return ["materialize", "--group", self.group, "--instance-id", f"{self.group}-1"]
        if name == "mapper":
            group = mapper_group(self.settings)
            return ["mapper", "--group", group, "--instance", f"{group}-1"]
        if name == "streams":
            return [
                "streams",
                "--web-port",
                str(self.streams_port),
                "--data-dir",
                str(self.log_dir / "streams-data"),
                "--replication-factor",
                "1",
            ]
        if name.startswith("crawler"):
            return ["crawler"]
        if name == "archiver":
            return ["archive"]
        raise ValueError(name)

    def start(self, *names: str) -> None:
        """Start (or restart) the named components; wait for the gateway to be ready.

        The gateway publishes deliveries, which the mapper turns into events: starting
        the gateway starts the mapper too, unless it runs or is named.
        """
        if "gateway" in names and "mapper" not in names and "mapper" not in self.comps:
            names = ("mapper", *names)
        for name in names:
            sup = self.sups.setdefault(name, Supervisor(self.env(name), self.log_dir))
            if name in self.comps:
                self.restarts[name] += 1
            self.comps[name] = sup.start(name, *self.args(name))
            if name == "gateway":
                wait_ready(self.gateway_url, timeout=60)
            if name == "mapper" and self._reviver is None:
                self._reviver = threading.Thread(target=self._revive_stuck_mapper, daemon=True)
                self._reviver.start()

    def _revive_stuck_mapper(self) -> None:
        """Start the mapper again when its watchdog made it exit (code 3: a transaction
        stuck in librdkafka after a broker outage), as `convsync run`'s supervisor or
        Kubernetes would; a mapper a scenario kills is the scenario's to restart."""
        while not self._halt.wait(1.0):
            comp = self.comps.get("mapper")
            if comp is not None and comp.proc is not None and comp.proc.poll() == STUCK_EXIT:
                self.restarts["mapper (stuck, restarted)"] += 1
                self.comps["mapper"] = self.sups["mapper"].start("mapper", *self.args("mapper"))

    def kill(self, name: str) -> None:
        """SIGKILL the component's whole process group (the gateway's workers too)."""
        comp = self.comps[name]
        assert comp.proc is not None and comp.alive(), f"{name} was not running"
        os.killpg(comp.proc.pid, signal.SIGKILL)
        comp.proc.wait(timeout=30)

    def dead(self) -> list[str]:
        return [n for n, c in self.comps.items() if not c.alive()]

    def rss(self) -> dict[str, int]:
        """RSS per running component in kB (process tree)."""
        return {n: rss_kb(c.proc.pid) for n, c in self.comps.items() if c.proc and c.alive()}

    def stop(self) -> None:
        self._halt.set()
        if self._reviver is not None:
            self._reviver.join(10)
        for sup in self.sups.values():
            sup.stop(timeout=20)
        if self.graph is not None:
            self.graph.stop()
            self.graph.loop.close()  # GraphThread.stop() leaves its loop open
            self.graph = None

    def logs(self) -> list[Path]:
        return sorted(self.log_dir.glob("*.log"))
