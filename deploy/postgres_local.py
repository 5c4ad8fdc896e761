"""A local PostgreSQL server run from the system's binaries (Debian's postgresql)."""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from convsync.errors import StackError

log = logging.getLogger(__name__)

DATABASE: Final = "convsync"
ROLE: Final = "convsync"


def pg_bin_dir() -> Path:
    """Return the newest ``/usr/lib/postgresql/N/bin``. Raises StackError if absent."""
    override = os.environ.get("CONVSYNC_PG_BIN")
    if override:
        return Path(override)
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise StackError("PostgreSQL server binaries not found; apt-get install postgresql")


@dataclass(frozen=True, slots=True)
class LocalPostgres:
    """A Postgres cluster in a folder of our own, on 127.0.0.1:``port``."""

    state_dir: Path
    port: int

    @property
    def _as_root(self) -> bool:
        return os.geteuid() == 0

    @property
    def root(self) -> Path:
        """Return where the cluster lives.

        As root the server runs as ``postgres``, which must reach the folder; when the
        state folder is not reachable by that user (e.g. under /root), the cluster lives
        in /var/tmp under a name derived from the state folder.
        """
        preferred = self.state_dir / "postgres"
        if not self._as_root or self._postgres_can_reach(self.state_dir):
            return preferred
        digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]
        return Path("/var/tmp") / f"convsync-pg-{digest}"  # noqa: S108 - fixed per-folder name, root-owned

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{DATABASE}"

    def _postgres_can_reach(self, folder: Path) -> bool:
        folder.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["runuser", "-u", "postgres", "--", "test", "-x", str(folder)],
            capture_output=True,
            check=False,
        )
        return proc.returncode == 0

    def _run(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        if self._as_root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise StackError(
                f"{' '.join(argv)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
        return proc

    def _chown(self, path: Path) -> None:
        if self._as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def running(self) -> bool:
        """Return True if the server in our data folder is up."""
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        proc = self._run(
            [str(pg_bin_dir() / "pg_ctl"), "status", "-D", str(self.data_dir)], check=False
        )
        return proc.returncode == 0

    def start(self) -> None:
        """Initialise the cluster on first use, start it, create role and database.

        Raises :class:`StackError` when the binaries are missing or the server fails.
        """
        bin_dir = pg_bin_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self._chown(self.root)
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._chown(self.data_dir)
            self._run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ]
            )
            conf = self.data_dir / "postgresql.conf"
            with conf.open("a") as f:
                f.write(
                    "\n# convsync local stack\n"
                    "listen_addresses = '127.0.0.1'\n"
                    f"port = {self.port}\n"
                    f"unix_socket_directories = '{self.root}'\n"
                    "max_connections = 200\n"
                    "shared_buffers = 256MB\n"
                    "wal_level = replica\n"
                    "max_wal_size = 2GB\n"
                )
        if not self.running():
            self.log_file.touch()
            self._chown(self.log_file)
            log.info("starting Postgres on 127.0.0.1:%s", self.port)
            self._run(
                [
                    str(bin_dir / "pg_ctl"),
                    "start",
                    "-w",
                    "-t",
                    "60",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-o",
                    f"-p {self.port}",
                ]
            )
        self._bootstrap_database()

    def _psql(self, statement: str, *, database: str = "postgres") -> str:
        proc = self._run(
            [
                str(pg_bin_dir() / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-tAc",
                statement,
            ]
        )
        return proc.stdout.strip()

    def _bootstrap_database(self) -> None:
        if self._psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}'") != "1":
            self._psql(f"CREATE ROLE {ROLE} LOGIN SUPERUSER")
        if self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'") != "1":
            self._psql(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")

    def stop(self, *, mode: str = "fast") -> None:
        """Stop the server (``mode``: smart, fast or immediate)."""
        if self.running():
            self._run(
                [
                    str(pg_bin_dir() / "pg_ctl"),
                    "stop",
                    "-w",
                    "-t",
                    "60",
                    "-m",
                    mode,
                    "-D",
                    str(self.data_dir),
                ]
            )

    def restart(self, *, mode: str = "fast") -> None:
        """Restart the server (fault tests)."""
        self.stop(mode=mode)
        self.start()
