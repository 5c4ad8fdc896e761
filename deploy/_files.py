"""Folders and secret files of the local stack, made so that no other local user can
redirect or read them.

A folder is created with ``mkdir`` (which never follows a symbolic link in its last
component) and then checked through a descriptor opened with ``O_NOFOLLOW``: a link
planted where a folder should be is refused, not followed. Secret files are created
``O_EXCL | O_NOFOLLOW`` with mode 0600 and read back only if they still are a regular
file of this user that nobody else can read.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from convsync.errors import StackError

_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def new_password() -> str:
    """Return a fresh random password (URL- and properties-safe characters only)."""
    return secrets.token_urlsafe(32)


def check_state_dir(path: Path) -> None:
    """Refuse a state folder that another user could change.

    ``path`` must exist, be a folder of this user, and be writable by nobody else:
    whoever can write to it could replace the secret files or plant links in it.
    Raises :class:`StackError` naming the command that fixes it.
    """
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise StackError(f"state folder {path} is not a folder")
    if st.st_uid != os.geteuid():
        raise StackError(
            f"state folder {path} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}); "
            "use a --state-dir of your own"
        )
    if st.st_mode & 0o022:
        raise StackError(
            f"state folder {path} is writable by other users; run `chmod go-w {path}` "
            "or use another --state-dir"
        )


def private_dir(path: Path, *, uid: int | None = None, gid: int | None = None) -> Path:
    """Create the folder ``path`` (its parent must exist) or accept the existing one.

    Either way it ends a real folder (never a symbolic link), mode 0700, owned by
    ``uid``/``gid`` (default: this process); an existing folder is taken over only from
    this process's own user. Returns ``path``. Raises :class:`StackError` for a link, a
    file, or a folder of another user.
    """
    me = os.geteuid()
    uid = me if uid is None else uid
    gid = os.getegid() if gid is None else gid
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    try:
        fd = os.open(path, _NOFOLLOW_DIR)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StackError(
                f"{path} is a symbolic link or not a folder; refusing to use it "
                f"(remove it if it is not yours: `rm {path}`)"
            ) from e
        raise StackError(f"cannot open folder {path}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if st.st_uid not in (uid, me):
            raise StackError(
                f"{path} belongs to uid {st.st_uid}, expected uid {uid}; refusing to use it"
            )
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(fd, uid, gid)
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path


def write_private(path: Path, text: str, *, uid: int | None = None, gid: int | None = None) -> None:
    """Write ``text`` to ``path`` (created or truncated), mode 0600, never through a link.

    The file ends owned by ``uid``/``gid`` when given (root writing for the server's
    user). Raises :class:`StackError` when ``path`` is a symbolic link.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StackError(f"{path} is a symbolic link; refusing to write through it") from e
        raise StackError(f"cannot write {path}: {e.strerror}") from e
    try:
        os.fchmod(fd, 0o600)
        if uid is not None and gid is not None:
            os.fchown(fd, uid, gid)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def read_private(path: Path) -> str:
    """Return the text (stripped) of the private file ``path``: a secret, or where one is.

    Raises :class:`StackError` when the file is missing, a symbolic link, not this
    user's, or readable by anyone else (with the command that fixes the mode).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise StackError(f"{path} is missing; run `convsync up` to create it") from e
    except OSError as e:
        raise StackError(f"cannot read {path} ({e.strerror}); it must be a plain file") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise StackError(f"{path} is not a file of yours; refusing to read it")
        if st.st_mode & 0o077:
            raise StackError(f"{path} can be read by other users; run `chmod 600 {path}`")
        with os.fdopen(os.dup(fd), "r", encoding="utf-8") as f:
            value = f.read().strip()
    finally:
        os.close(fd)
    if not value:
        raise StackError(f"{path} is empty; delete it and run `convsync up`")
    return value


def fernet_key() -> str:
    """Return a new key for ``CONVSYNC_SECRET_KEY`` (32 random bytes, url-safe base64)."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def ensure_secret(path: Path, make: Callable[[], str] | None = None) -> str:
    """Return the secret in ``path``, generating it (0600, created exclusively) on first use
    with ``make`` (default: a password).

    Raises :class:`StackError` as :func:`read_private` does.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return read_private(path)
    except OSError as e:
        raise StackError(f"cannot create {path}: {e.strerror}") from e
    try:
        os.write(fd, ((make or new_password)() + "\n").encode())
    finally:
        os.close(fd)
    return read_private(path)
