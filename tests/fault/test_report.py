"""The fault report says whose wall time it shows."""

from __future__ import annotations

from typing import Any

from tests.fault.report import render_text

RESULTS: list[dict[str, Any]] = [
    {
        "number": n,
        "title": f"scenario {n}",
        "figures": {"lost (missing)": 0, "duplicates": 0, "postgres equals truth": True},
        "seconds": seconds,
        "done": "what it does",
        "scale": "small",
        "finished_at": "2026-11-29 11:00:00 UTC",
    }
    for n, seconds in ((1, 80.5), (2, 20.0))
]


def _session(session_tests: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "seconds": 1400.0,
        "tests": ["tests/fault/test_a.py::t", "tests/fault/test_b.py::t"],
        "exit status": 0,
        "finished_at": "2026-11-29 11:30:00 UTC",
    }
    if session_tests is not None:
        out["session tests"] = session_tests
    return out


def test_a_fault_only_session_reports_its_wall_time() -> None:
    text = render_text(RESULTS, _session(2))
    assert (
        "Last run of the whole suite: 1400.0 s wall time (2 tests, finished "
        "2026-11-29 11:30:00 UTC, exit status 0)." in text
    )
    # Sessions recorded before "session tests" existed read the same way.
    assert render_text(RESULTS, _session(None)) == text


def test_inside_the_whole_test_suite_the_scenarios_own_time_is_reported() -> None:
    text = render_text(RESULTS, _session(253))
    assert "1400.0 s wall time" not in text
    assert (
        "Last run of the whole suite: 2 scenario tests, 100.5 s of their own (the sum "
        "above), inside a pytest session of 1400.0 s and 253 tests" in text
    )
