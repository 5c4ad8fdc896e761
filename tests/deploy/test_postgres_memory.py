"""The local stack's shared_buffers: a quarter of the memory the machine (or its container)
has (deploy/postgres_local.py)."""

from __future__ import annotations

from pathlib import Path

from deploy.postgres_local import DEFAULT_SHARED_BUFFERS_MB, memory_mb, shared_buffers_mb

MEMINFO = "MemTotal:       24684012 kB\nMemFree:         1000000 kB\n"


def _files(tmp_path: Path, meminfo: str | None, *limits: str) -> tuple[Path, tuple[Path, ...]]:
    info = tmp_path / "meminfo"
    if meminfo is not None:
        info.write_text(meminfo)
    paths = []
    for i, limit in enumerate(limits):
        paths.append(tmp_path / f"limit{i}")
        paths[-1].write_text(limit + "\n")
    return info, (*paths, tmp_path / "no-such-limit")


def test_the_memory_is_the_machines_without_a_container_limit(tmp_path: Path) -> None:
    info, limits = _files(tmp_path, MEMINFO, "max", "9223372036854771712")
    assert memory_mb(info, limits) == 24684012 // 1024


def test_a_container_limit_below_the_machines_memory_wins(tmp_path: Path) -> None:
    info, limits = _files(tmp_path, MEMINFO, "max", str(2 * 1024**3))
    assert memory_mb(info, limits) == 2048
    info, limits = _files(tmp_path, MEMINFO, str(3 * 1024**3))
    assert memory_mb(info, limits) == 3072


def test_unknown_memory_is_none(tmp_path: Path) -> None:
    assert memory_mb(*_files(tmp_path, None)) is None
    assert memory_mb(*_files(tmp_path, "MemFree: 12 kB\n")) is None
    assert memory_mb(*_files(tmp_path, "MemTotal: lots\n")) is None


def test_shared_buffers_are_a_quarter_of_memory_at_least_128mb() -> None:
    assert shared_buffers_mb(24105) == 6026
    assert shared_buffers_mb(2048) == 512
    assert shared_buffers_mb(300) == 128
    assert shared_buffers_mb(None) == DEFAULT_SHARED_BUFFERS_MB == 256
