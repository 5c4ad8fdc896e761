"""Content-addressed files under the media folder, crash-safe.

Layout: ``<dir>/ab/cd/abcdef…`` (the sha256 of the bytes, hex; the first two pairs of
digits as folders). A file is written under ``<dir>/.partial/<random>.part`` (same file
system), fsynced, then given its final name with ``link`` (atomic, and never replaces:
the same content stored before means the new copy is dropped), then the folder is
fsynced. So a final name only ever shows a complete file, and content is stored once
however many attachments carry it.

A temp file is ``flock``-ed by the process writing it for as long as it lives. A killed
process loses its locks, so :meth:`MediaStore.clean_partials` deletes exactly the temp
files of dead writers, even with other archivers working in the same folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final

PARTIAL: Final = ".partial"
KEY: Final = re.compile(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{64}")
FILE_MODE: Final = 0o640
DIR_MODE: Final = 0o750


def key_of(sha256: str) -> str:
    """Return the storage key (relative path) of content with hex digest ``sha256``."""
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A file in the store: its digest, size, key, and whether this write created it."""

    sha256: str
    size: int
    key: str
    new: bool


class TempFile:
    """A file being written: bytes go to disk as they come, hashed on the way."""

    def __init__(self, store: MediaStore, path: Path, fd: int) -> None:
        self._store = store
        self.path = path
        self._fd: int | None = fd
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``."""
        assert self._fd is not None
        view = memoryview(chunk)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._hash.update(chunk)
        self.size += len(chunk)

    def commit(self) -> StoredFile:
        """Make the bytes durable under their final name; return where they are.

        Steps, in this order: 1. fsync the data; 2. link it under its final name (fails
        when the content is there already: then this copy is dropped); 3. fsync the
        final folder, so the name survives a power cut before any row names it;
        4. remove the temp name.
        """
        assert self._fd is not None
        try:
            os.fsync(self._fd)
            sha = self._hash.hexdigest()
            key = key_of(sha)
            final = self._store.root / key
            final.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            new = True
            try:
                os.link(self.path, final)
            except FileExistsError:
                new = False
            _fsync_dir(final.parent)
        finally:
            self.abort()
        return StoredFile(sha, self.size, key, new)

    def abort(self) -> None:
        """Delete the temp file (also after :meth:`commit`, which calls it)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


class MediaStore:
    """The media folder: final files by content, temp files of running downloads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.partial = root / PARTIAL

    def prepare(self) -> None:
        """Create the folder and its temp folder."""
        self.partial.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)

    def path_of(self, key: str) -> Path:
        """Return the path of storage key ``key``; raise ValueError for a malformed key."""
        if not KEY.fullmatch(key):
            raise ValueError(f"not a storage key: {key!r}")
        return self.root / key

    def has(self, key: str, size: int) -> bool:
        """Return whether the file of ``key`` is there with ``size`` bytes."""
        try:
            return self.path_of(key).stat().st_size == size
        except FileNotFoundError:
            return False

    def open_temp(self) -> TempFile:
        """Return a new locked temp file."""
        while True:
            path = self.partial / f"{uuid.uuid4().hex}.part"
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            # A cleaner that locked and unlinked the name between our open and our lock
            # leaves us a nameless file: start again with a new name.
            if os.fstat(fd).st_nlink == 0:
                os.close(fd)
                continue
            return TempFile(self, path, fd)

    def clean_partials(self) -> int:
        """Delete temp files no live process holds (a killed run's); return how many."""
        removed = 0
        try:
            paths = list(self.partial.iterdir())
        except FileNotFoundError:
            return 0
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except (FileNotFoundError, IsADirectoryError):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)
        return removed
