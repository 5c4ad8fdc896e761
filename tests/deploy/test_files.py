"""The stack's folders and secret files: never through a planted link, never readable by
other users."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from convsync.errors import StackError
from deploy._files import check_state_dir, ensure_secret, private_dir, read_private


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_secret_is_created_0600_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "x.password"
    first = ensure_secret(path)
    assert len(first) >= 32
    assert mode(path) == 0o600
    assert ensure_secret(path) == first


def test_a_secret_readable_by_others_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "x.password"
    ensure_secret(path)
    path.chmod(0o644)
    with pytest.raises(StackError, match=f"chmod 600 {path}"):
        read_private(path)


def test_a_link_planted_for_a_secret_is_neither_followed_nor_written(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    path = tmp_path / "x.password"
    path.symlink_to(target)
    with pytest.raises(StackError):
        ensure_secret(path)
    assert target.read_text() == ""


def test_a_link_planted_for_a_folder_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    link = tmp_path / "postgres"
    link.symlink_to(target)
    with pytest.raises(StackError, match="symbolic link"):
        private_dir(link)
    assert list(target.iterdir()) == []
    assert mode(target) == 0o755 & ~_umask()


def test_a_folder_is_made_0700_even_when_it_existed(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir(mode=0o755)
    private_dir(folder)
    assert mode(folder) == 0o700
    assert mode(private_dir(tmp_path / "new")) == 0o700


def test_a_state_folder_others_can_write_to_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    with pytest.raises(StackError, match=f"chmod go-w {state}"):
        check_state_dir(state)
    state.chmod(0o755)
    check_state_dir(state)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
