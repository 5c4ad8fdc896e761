"""The content-addressed media folder: final names, one file per content, temp files."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from consumers.archiver.storage import MediaStore, key_of


def write(store: MediaStore, data: bytes) -> tuple[str, bool]:
    temp = store.open_temp()
    for i in range(0, len(data), 1000):
        temp.write(data[i : i + 1000])
    stored = temp.commit()
    assert stored.size == len(data)
    return stored.key, stored.new


def test_files_are_named_by_their_sha256_and_stored_once(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    store.prepare()
    data = os.urandom(5000)
    sha = hashlib.sha256(data).hexdigest()
    assert write(store, data) == (key_of(sha), True)
    assert write(store, data) == (key_of(sha), False)
    assert key_of(sha) == f"{sha[:2]}/{sha[2:4]}/{sha}"
    assert (tmp_path / key_of(sha)).read_bytes() == data
    assert store.has(key_of(sha), 5000)
    assert not store.has(key_of(sha), 4999)
    assert list(store.partial.iterdir()) == []
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [tmp_path / key_of(sha)]


def test_an_aborted_write_leaves_nothing(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    store.prepare()
    temp = store.open_temp()
    temp.write(b"half")
    temp.abort()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_keys_are_checked(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    for bad in ("../../etc/passwd", "ab/cd/" + "0" * 63, "/abs/" + "0" * 64):
        with pytest.raises(ValueError, match="not a storage key"):
            store.path_of(bad)


def test_cleaning_removes_only_temp_files_no_live_process_holds(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    store.prepare()
    mine = store.open_temp()
    mine.write(b"in progress")
    # A temp file of a killed process: its lock died with it.
    dead = store.partial / "dead.part"
    dead.write_bytes(b"leftover")
    # A temp file of another live process, which holds its lock.
    other = store.partial / "other.part"
    other.write_bytes(b"theirs")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'rb');"
            " fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
            str(other),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        assert store.clean_partials() == 1
        assert sorted(p.name for p in store.partial.iterdir()) == sorted(
            [mine.path.name, "other.part"]
        )
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    assert store.clean_partials() == 1  # its holder is gone now
    assert [p.name for p in store.partial.iterdir()] == [mine.path.name]
    mine.write(b" and done")
    key = mine.commit().key
    assert (tmp_path / key).read_bytes() == b"in progress and done"


def test_a_temp_file_is_locked_while_written(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    store.prepare()
    temp = store.open_temp()
    with temp.path.open("rb") as f, pytest.raises(BlockingIOError):
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    temp.abort()
