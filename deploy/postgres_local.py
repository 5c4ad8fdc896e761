"""A local PostgreSQL server run from the system's binaries (Debian's postgresql).

Safe on a machine shared with other users: the superuser ``postgres`` logs in only
through the server's socket, kept in the cluster's 0700 folder, as the server's own OS
user (peer authentication); the application role ``convsync`` is no superuser, may only
create (and so own) schemas in its database, and logs in with a generated password
(scram-sha-256) kept in ``<state>/postgres.password`` (mode 0600). No ``trust`` line
exists. ``start`` rewrites the authentication files every time, so a cluster made by an
older convsync (trust, superuser role) is upgraded in place.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import pwd
import secrets
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import quote

import psycopg
from psycopg import sql

from convsync.errors import StackError
from deploy._files import check_state_dir, ensure_secret, private_dir, read_private, write_private

log = logging.getLogger(__name__)

DATABASE: Final = "convsync"
ROLE: Final = "convsync"
SUPERUSER: Final = "postgres"
PASSWORD_FILE: Final = "postgres.password"  # noqa: S105 - a file name
#: Where the cluster lives when it cannot live in the state folder (root, see ``root``).
LOCATION_FILE: Final = "postgres.location"
INCLUDE: Final = "include_if_exists = 'convsync.conf'"
#: shared_buffers where the machine's memory is not known (no /proc/meminfo).
DEFAULT_SHARED_BUFFERS_MB: Final = 256
#: A container's memory limit: cgroup v2, then v1 (no limit: "max", or a huge number).
CGROUP_LIMITS: Final = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)


def memory_mb(
    meminfo: Path = Path("/proc/meminfo"), limits: tuple[Path, ...] = CGROUP_LIMITS
) -> int | None:
    """Return the memory this machine (or the container it runs in, if less) has, in MB;
    None when ``meminfo`` cannot be read."""
    try:
        total = next(
            int(line.split()[1]) // 1024
            for line in meminfo.read_text().splitlines()
            if line.startswith("MemTotal:")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    for path in limits:
        try:
            total = min(total, int(path.read_text().strip()) // (1024 * 1024))
        except (OSError, ValueError):
            continue
    return total


def shared_buffers_mb(memory: int | None) -> int:
    """Return the local stack's ``shared_buffers`` in MB for ``memory`` MB: a quarter
    (Postgres's own advice for a dedicated server), at least 128; 256 when unknown.

    With 256MB the materializer's index pages on a large data set went in and out of
    Postgres's buffers from the OS cache at every event, and its Postgres cost 1.4x the CPU
    per event (docs/performance.md, "Postgres's buffers"). Shared memory is taken as pages
    are used, so a small database costs no more than before.
    """
    return DEFAULT_SHARED_BUFFERS_MB if memory is None else max(128, memory // 4)


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


def server_user() -> pwd.struct_passwd:
    """Return the OS user the server runs as: ``postgres`` for root, else this user."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam("postgres")
    except KeyError as e:
        raise StackError(
            "as root the server runs as the user postgres, which does not exist; "
            "apt-get install postgresql"
        ) from e


def random_name() -> str:
    """Return the name of a new cluster folder outside the state folder (unpredictable)."""
    return f"convsync-pg-{secrets.token_hex(8)}"


def _hba(superuser_os_users: list[str]) -> tuple[str, str]:
    hba = (
        "# Written by convsync at every start (deploy/postgres_local.py): edits are lost.\n"
        "# The superuser: only through the socket, as the server's OS user (pg_ident.conf).\n"
        f"local   all       {SUPERUSER}                 peer map=convsync\n"
        "# The application role: with its password, to its own database only.\n"
        f"local   {DATABASE}  {ROLE}                 scram-sha-256\n"
        f"host    {DATABASE}  {ROLE}  127.0.0.1/32   scram-sha-256\n"
    )
    ident = "# Written by convsync: OS users that may log in as the superuser (socket only).\n"
    ident += "".join(f"convsync  {user}  {SUPERUSER}\n" for user in superuser_os_users)
    return hba, ident


@dataclass(frozen=True, slots=True)
class LocalPostgres:
    """A Postgres cluster of the state folder ``state_dir``, on 127.0.0.1:``port``."""

    state_dir: Path
    port: int

    @property
    def _as_root(self) -> bool:
        return os.geteuid() == 0

    @property
    def root(self) -> Path | None:
        """Return the cluster's folder (data, socket, log), or None before the first start.

        It is ``<state>/postgres``, except as root when the ``postgres`` user cannot
        enter the state folder (under /root, say): then it is a folder of a random name
        in that user's home, created at the first start and recorded in
        ``<state>/postgres.location``.
        """
        location = self.state_dir / LOCATION_FILE
        if os.path.lexists(location):
            return Path(read_private(location))
        inside = self.state_dir / "postgres"
        if not self._as_root or os.path.lexists(inside) or self._postgres_can_reach():
            return inside
        return None

    @property
    def data_dir(self) -> Path | None:
        root = self.root
        return None if root is None else root / "data"

    @property
    def log_file(self) -> Path | None:
        root = self.root
        return None if root is None else root / "postgres.log"

    @property
    def password_file(self) -> Path:
        return self.state_dir / PASSWORD_FILE

    @property
    def url(self) -> str:
        """Return the application role's URL, password included: a secret, never logged.

        Raises :class:`StackError` when the password file is missing or unsafe.
        """
        password = quote(read_private(self.password_file), safe="")
        return f"postgresql://{ROLE}:{password}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def public_url(self) -> str:
        """Return the URL without the password (safe to print)."""
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{DATABASE}"

    def _postgres_can_reach(self) -> bool:
        proc = subprocess.run(
            ["runuser", "-u", "postgres", "--", "test", "-x", str(self.state_dir)],
            capture_output=True,
            check=False,
            timeout=30,
        )
        return proc.returncode == 0

    def _run(
        self, argv: list[str], *, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        if self._as_root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
        if check and proc.returncode != 0:
            raise StackError(
                f"{' '.join(argv)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
        return proc

    def _pg_ctl(self, data: Path, *args: str, check: bool = True) -> int:
        argv = [str(pg_bin_dir() / "pg_ctl"), *args, "-D", str(data)]
        return self._run(argv, check=check).returncode

    def running(self) -> bool:
        """Return True if the server in our data folder is up."""
        data = self.data_dir
        if data is None or not (data / "PG_VERSION").exists():
            return False
        return self._pg_ctl(data, "status", check=False) == 0

    def start(self) -> None:
        """Initialise the cluster on first use, start it, set up roles and database.

        Also upgrades a cluster made by an older convsync (see the module docstring).
        Raises :class:`StackError` when the binaries are missing, a folder or file is
        unsafe (a planted link, another user's folder) or the server fails.
        """
        bin_dir = pg_bin_dir()
        user = server_user()
        self.state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        check_state_dir(self.state_dir)
        password = ensure_secret(self.password_file)
        root = self._prepare_root(user)
        data = private_dir(root / "data", uid=user.pw_uid, gid=user.pw_gid)
        if not (data / "PG_VERSION").exists():
            self._run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    SUPERUSER,
                    "--auth-local=peer",
                    "--auth-host=reject",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    "--no-instructions",
                ]
            )
        self._configure(root, data, user)
        if self.running():
            self._pg_ctl(data, "reload")
        else:
            log.info("starting Postgres on 127.0.0.1:%s", self.port)
            self._pg_ctl(data, "start", "-w", "-t", "60", "-l", str(root / "postgres.log"))
        self._bootstrap(root, password)

    def _prepare_root(self, user: pwd.struct_passwd) -> Path:
        root = self.root
        if root is not None:
            return private_dir(root, uid=user.pw_uid, gid=user.pw_gid)
        root = self._new_outside_root(user)
        try:
            self._adopt_legacy(root, user)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            (self.state_dir / LOCATION_FILE).unlink(missing_ok=True)
            raise
        return root

    def _new_outside_root(self, user: pwd.struct_passwd) -> Path:
        # Root, and the postgres user cannot enter the state folder: the cluster goes to
        # a new folder of an unpredictable name in that user's home, a folder only
        # root and postgres can write to (so nobody else can plant anything there).
        home = Path(user.pw_dir)
        try:
            st = os.lstat(home)
        except OSError as e:
            raise StackError(self._unreachable(f"its home {home} is missing")) from e
        if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (0, user.pw_uid) or st.st_mode & 0o022:
            raise StackError(self._unreachable(f"its home {home} is not a private folder"))
        root = home / random_name()
        try:
            root.mkdir(mode=0o700)
        except FileExistsError as e:
            raise StackError(f"{root} exists already; refusing to use it") from e
        private_dir(root, uid=user.pw_uid, gid=user.pw_gid)
        write_private(self.state_dir / LOCATION_FILE, f"{root}\n")
        log.info("the postgres user cannot enter %s: the cluster lives in %s", self.state_dir, root)
        return root

    def _unreachable(self, why: str) -> str:
        return (
            f"the postgres user cannot enter {self.state_dir} and {why}; "
            "use a --state-dir that user can enter (every folder above it world-executable, "
            "e.g. /srv/convsync) or create the postgres user's home "
            "(`install -d -o postgres -g postgres -m 755 /var/lib/postgresql`)"
        )

    def _legacy_root(self) -> Path:
        # Where convsync kept the cluster as root before it moved out of /var/tmp.
        digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]
        return Path("/var/tmp") / f"convsync-pg-{digest}"  # noqa: S108 - only read, never created

    def _adopt_legacy(self, root: Path, user: pwd.struct_passwd) -> None:
        """Move a cluster an older convsync made at the predictable /var/tmp path into
        ``root``: only a real folder of the postgres user is taken, never a link."""
        old = self._legacy_root()
        try:
            st = os.lstat(old)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != user.pw_uid:
            log.warning("ignoring %s: not a folder of %s (never followed)", old, user.pw_name)
            return
        old_data = old / "data"
        if not (old_data / "PG_VERSION").is_file():
            return
        if self._pg_ctl(old_data, "status", check=False) == 0:
            self._pg_ctl(old_data, "stop", "-w", "-t", "60", "-m", "fast")
        log.info("moving the cluster of %s from %s to %s", self.state_dir, old_data, root)
        try:
            old_data.rename(root / "data")
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise StackError(f"cannot move {old_data} to {root}: {e.strerror}") from e
            # Another file system: copy (links copied as links), then hand it to postgres.
            shutil.copytree(old_data, root / "data", symlinks=True)
            for folder, dirs, files in os.walk(root / "data"):
                for name in [*dirs, *files]:
                    os.lchown(Path(folder) / name, user.pw_uid, user.pw_gid)
            os.lchown(root / "data", user.pw_uid, user.pw_gid)
        shutil.rmtree(old)

    def _configure(self, root: Path, data: Path, user: pwd.struct_passwd) -> None:
        """Write our settings and the authentication files (every start: upgrades too)."""
        uid, gid = user.pw_uid, user.pw_gid
        socket_dir = str(root).replace("'", "''")
        write_private(
            data / "convsync.conf",
            "# Written by convsync at every start (deploy/postgres_local.py): edits are lost.\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {self.port}\n"
            f"unix_socket_directories = '{socket_dir}'\n"
            "unix_socket_permissions = 0700\n"
            "password_encryption = 'scram-sha-256'\n"
            "max_connections = 200\n"
            f"shared_buffers = {shared_buffers_mb(memory_mb())}MB\n"
            "wal_level = replica\n"
            # Checkpoints far apart and full-page images compressed: with 2GB a
            # materializer at a few thousand events/s forced a checkpoint every ~20 s,
            # and the first write of each page after one went to the WAL whole (30-44 KB
            # of WAL per event; docs/performance.md, "Checkpoints and the WAL").
            "max_wal_size = 16GB\n"
            "checkpoint_timeout = 15min\n"
            "wal_compression = lz4\n",
            uid=uid,
            gid=gid,
        )
        conf = data / "postgresql.conf"
        if INCLUDE not in conf.read_text():
            # Last in the file, so it wins over what an older convsync appended.
            fd = os.open(conf, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
            try:
                os.write(fd, f"\n# convsync local stack\n{INCLUDE}\n".encode())
            finally:
                os.close(fd)
        os_users = sorted({user.pw_name, pwd.getpwuid(os.geteuid()).pw_name})
        hba, ident = _hba(os_users)
        write_private(data / "pg_hba.conf", hba, uid=uid, gid=gid)
        write_private(data / "pg_ident.conf", ident, uid=uid, gid=gid)

    def _bootstrap(self, root: Path, password: str) -> None:
        """Create or fix the application role and database, as the superuser (socket)."""
        role = sql.Identifier(ROLE)
        database = sql.Identifier(DATABASE)
        try:
            conn = psycopg.connect(
                host=str(root),
                port=self.port,
                user=SUPERUSER,
                dbname="postgres",
                autocommit=True,
                connect_timeout=10,
                application_name="convsync-up",
            )
        except psycopg.OperationalError as e:
            raise StackError(f"cannot reach Postgres through its socket in {root}: {e}") from e
        with conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone():
                log.debug("role %s exists", ROLE)
            else:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
            # Also what upgrades the superuser role of an older convsync.
            conn.execute(
                sql.SQL(
                    "ALTER ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
                    " NOREPLICATION NOBYPASSRLS"
                ).format(role)
            )
            # Hashed here: the server only ever sees the scram verifier, not the password.
            verifier = conn.pgconn.encrypt_password(
                password.encode(), ROLE.encode(), b"scram-sha-256"
            )
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(role, sql.Literal(verifier.decode()))
            )
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if found.fetchone():
                conn.execute(
                    sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                        database, sql.Identifier(SUPERUSER)
                    )
                )
            else:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        database, sql.Identifier(SUPERUSER)
                    )
                )
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(database))
            conn.execute(
                sql.SQL("GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {} TO {}").format(
                    database, role
                )
            )
            # The benchmarks start each round after a CHECKPOINT; pg_checkpoint lets the
            # role ask for one and for nothing else (no files, no programs, no settings).
            conn.execute(sql.SQL("GRANT pg_checkpoint TO {}").format(role))

    def stop(self, *, mode: str = "fast") -> None:
        """Stop the server (``mode``: smart, fast or immediate)."""
        data = self.data_dir
        if data is not None and self.running():
            self._pg_ctl(data, "stop", "-w", "-t", "60", "-m", mode)

    def restart(self, *, mode: str = "fast") -> None:
        """Restart the server (fault tests)."""
        self.stop(mode=mode)
        self.start()

    def destroy(self) -> None:
        """Stop the server and delete the cluster's folder (tests' private servers)."""
        self.stop(mode="immediate")
        root = self.root
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
        (self.state_dir / LOCATION_FILE).unlink(missing_ok=True)
