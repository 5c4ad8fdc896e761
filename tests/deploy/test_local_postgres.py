"""The local Postgres is safe on a shared machine: password auth, an application role that
is no superuser, folders nobody else can redirect, old clusters upgraded."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from convsync.errors import StackError
from deploy import postgres_local
from deploy._files import read_private
from deploy.postgres_local import LocalPostgres, pg_bin_dir, server_user
from tests.fixtures.stack import free_port_pair

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AS_ROOT = os.geteuid() == 0
root_only = pytest.mark.skipif(not AS_ROOT, reason="as root the server runs as postgres")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def refused(url: str, **kwargs: object) -> str:
    """Return why a connection to ``url`` was refused (fails the test if it was not)."""
    # passfile: no ~/.pgpass may supply a password behind the test's back.
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(url, connect_timeout=5, passfile="/dev/null", **kwargs).close()
    return str(info.value)


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder every user (postgres too) can enter, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="convsync-test-", dir="/var/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_the_password_is_in_a_private_file_and_required(private_postgres: LocalPostgres) -> None:
    pg = private_postgres
    assert mode(pg.password_file) == 0o600
    assert pg.password_file.stat().st_uid == os.geteuid()
    root, data = pg.root, pg.data_dir
    assert root is not None and data is not None
    for folder in (root, data):
        assert mode(folder) == 0o700, folder
        assert folder.stat().st_uid == server_user().pw_uid
    hba = [
        line.split()
        for line in (data / "pg_hba.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert hba and all(fields[-1] != "trust" for fields in hba), hba
    assert "trust" not in {f for fields in hba for f in fields}
    with psycopg.connect(pg.url) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("convsync",)
    assert "password" in refused(pg.public_url)
    assert "password authentication failed" in refused(pg.public_url, password="wrong")
    superuser = f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
    password = read_private(pg.password_file)
    assert "no pg_hba.conf entry" in refused(superuser, password=password)
    # The application role reaches its own database only.
    assert "no pg_hba.conf entry" in refused(pg.url.replace("/convsync", "/postgres"))


def test_the_server_gets_a_quarter_of_memory_as_shared_buffers(
    private_postgres: LocalPostgres,
) -> None:
    with psycopg.connect(private_postgres.url) as conn:
        row = conn.execute(
            "SELECT setting::bigint * 8192 / 1048576 FROM pg_settings WHERE name = 'shared_buffers'"
        ).fetchone()
    assert row is not None
    assert row[0] == postgres_local.shared_buffers_mb(postgres_local.memory_mb())


def test_the_application_role_cannot_run_programs_or_read_files(
    private_postgres: LocalPostgres,
) -> None:
    with psycopg.connect(private_postgres.url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls"
            " FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert row == (False, False, False, False, False)
        for statement in (
            "COPY (SELECT 1) TO PROGRAM 'id'",
            "COPY (SELECT 1) TO '/tmp/convsync-test-copy'",
            "SELECT pg_read_file('/etc/passwd')",
            "SELECT pg_ls_dir('.')",
            "SELECT lo_import('/etc/passwd')",
            "CREATE DATABASE other",
            "CREATE ROLE other",
            "CREATE TABLE public.t (x int)",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)
        # What tests and migrations need: schemas of its own, in its database.
        conn.execute("CREATE SCHEMA mine")
        conn.execute("CREATE TABLE mine.t (x int)")
        owner = conn.execute(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'mine'"
        )
        assert owner.fetchone() == ("convsync",)


@root_only
def test_as_root_a_state_folder_postgres_cannot_enter_gets_an_unpredictable_cluster(
    private_postgres: LocalPostgres, tmp_path: Path
) -> None:
    # tmp_path is in root's 0700 pytest folder: postgres cannot enter it.
    pg = private_postgres
    root = pg.root
    assert root is not None
    assert tmp_path not in root.parents
    assert root.parent == Path(pwd.getpwnam("postgres").pw_dir)
    assert re.fullmatch(r"convsync-pg-[0-9a-f]{16}", root.name)
    assert root != pg._legacy_root()
    assert mode(tmp_path / postgres_local.LOCATION_FILE) == 0o600


@root_only
def test_a_link_planted_at_the_old_predictable_path_is_not_followed(
    tmp_path: Path, open_folder: Path
) -> None:
    pg = LocalPostgres(tmp_path, free_port_pair())
    legacy = pg._legacy_root()
    target = open_folder / "target"
    target.mkdir(mode=0o755)
    legacy.symlink_to(target)
    try:
        pg.start()
        with psycopg.connect(pg.url) as conn:
            conn.execute("SELECT 1")
        assert list(target.iterdir()) == []
        assert target.stat().st_uid == 0
        assert legacy.is_symlink()
        assert pg.root is not None and pg.root != legacy
    finally:
        pg.destroy()
        legacy.unlink()


@pytest.mark.parametrize("where", ["state folder", "outside (root)"])
def test_a_link_planted_at_the_cluster_path_is_refused(
    where: str, tmp_path: Path, open_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if where == "state folder":
        link = tmp_path / "postgres"
    elif AS_ROOT:
        # The name is random; made known here to plant a link where it will be made.
        monkeypatch.setattr(postgres_local, "random_name", lambda: "convsync-pg-planted")
        link = Path(pwd.getpwnam("postgres").pw_dir) / "convsync-pg-planted"
    else:
        pytest.skip("as root only: the server then runs as postgres")
    target = open_folder / "target"
    target.mkdir(mode=0o755)
    link.symlink_to(target)
    pg = LocalPostgres(tmp_path, free_port_pair())
    try:
        with pytest.raises(StackError, match=r"exists already|symbolic link"):
            pg.start()
        assert list(target.iterdir()) == []
        assert not pg.running()
    finally:
        link.unlink()
        pg.destroy()


def make_old_cluster(root: Path, port: int) -> None:
    """Build and start a cluster as convsync did before: trust auth, a superuser role
    owning the database, the socket in ``root``; with one row to keep."""
    user = server_user()
    run_as = ["runuser", "-u", "postgres", "--"] if AS_ROOT else []
    bin_dir = pg_bin_dir()
    (root / "data").mkdir(parents=True)
    for folder in (root, root / "data"):
        os.chown(folder, user.pw_uid, user.pw_gid)
    (root / "data").chmod(0o700)

    def run(*argv: str) -> None:
        subprocess.run([*run_as, *argv], check=True, capture_output=True, timeout=120)

    data = str(root / "data")
    run(str(bin_dir / "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "--locale=C.UTF-8")
    with (root / "data" / "postgresql.conf").open("a") as f:
        f.write(
            f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{root}'\n"
        )
    run(str(bin_dir / "pg_ctl"), "start", "-w", "-D", data, "-l", str(root / "postgres.log"))
    psql = [str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c"]
    run(*psql, "CREATE ROLE convsync LOGIN SUPERUSER")
    run(*psql, "CREATE DATABASE convsync OWNER convsync")
    with psycopg.connect(f"postgresql://convsync@127.0.0.1:{port}/convsync", autocommit=True) as c:
        c.execute("CREATE SCHEMA keep")
        c.execute("CREATE TABLE keep.t (x int)")
        c.execute("INSERT INTO keep.t VALUES (42)")


@pytest.mark.parametrize("layout", ["in the state folder", "legacy (root)"])
def test_a_cluster_of_the_old_code_is_upgraded_by_start(
    layout: str, tmp_path: Path, open_folder: Path
) -> None:
    if layout == "legacy (root)":
        if not AS_ROOT:
            pytest.skip("as root only: the old code used /var/tmp only for root")
        state = tmp_path  # postgres cannot enter it: the old code used /var/tmp
    else:
        state = open_folder / "state"  # postgres can enter it: the old code used state/postgres
        state.mkdir(mode=0o755)
    pg = LocalPostgres(state, free_port_pair())
    old_root = pg._legacy_root() if layout == "legacy (root)" else state / "postgres"
    try:
        make_old_cluster(old_root, pg.port)
        pg.start()
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SELECT x FROM keep.t").fetchall() == [(42,)]
            row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'convsync'")
            assert row.fetchone() == (False,)
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute("COPY (SELECT 1) TO PROGRAM 'id'")
        assert "password" in refused(pg.public_url)
        assert pg.data_dir is not None
        assert "trust" not in (pg.data_dir / "pg_hba.conf").read_text()
        if layout == "legacy (root)":
            assert not os.path.lexists(old_root)
        assert pg.root is not None and mode(pg.root) == 0o700
        pg.restart()
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SELECT x FROM keep.t").fetchall() == [(42,)]
    finally:
        pg.destroy()
        if (old_root / "data" / "PG_VERSION").exists():
            subprocess.run(
                [
                    *(["runuser", "-u", "postgres", "--"] if AS_ROOT else []),
                    str(pg_bin_dir() / "pg_ctl"),
                    "stop",
                    "-m",
                    "immediate",
                    "-D",
                    str(old_root / "data"),
                ],
                check=False,
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(old_root, ignore_errors=True)
