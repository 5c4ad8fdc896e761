"""The OpenAPI document checked against the running server with schemathesis (bounded)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from admin.app import OPENAPI
from tests.admin.conftest import TOKEN, AdminEnv, message, now_ms

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_schemathesis_finds_no_contract_violation(admin_env: AdminEnv, tmp_path: Path) -> None:
    # A real conversation so GET and PATCH also reach their 200 answers.
    admin_env.produce([message("p1", "u1", "m1", now_ms(), text="hello")])
    st = Path(sys.executable).with_name("schemathesis")
    cmd = [
        str(st),
        "run",
        str(OPENAPI),
        "--url",
        admin_env.base,
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--checks",
        "all",
        # A missing If-Match is answered 428 Precondition Required (RFC 6585), which this
        # check does not list among the answers it accepts; test_api covers the 428.
        # DELETE /crawls/{id} cancels a crawl, whose history row stays readable (status
        # "cancelled"): by design not the 404 after a DELETE this check wants.
        # DELETE /pages/{id} stops syncing a page and keeps its data on purpose, so its
        # conversations stay readable after it (use_after_free expects a 404 there).
        "--exclude-checks",
        "missing_required_header,use_after_free",
        "--max-examples",
        "15",
        "--max-time",
        "60",
        "--seed",
        "7",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    # A list's cursor is opaque: the schema gives its shape, but only cursors the server
    # made (signed, for that list) are accepted; any other is answered 400 "start again
    # from the first page" (tests/admin/test_lists.py). So for the operations that take
    # one, a 400 is also an acceptable answer to a schema-valid request.
    (tmp_path / "schemathesis.toml").write_text(
        "[[operations]]\n"
        'include-method = "GET"\n'
        'include-path-regex = "/(conversations|messages|events|crawls)$"\n'
        "checks.positive_data_acceptance.expected-statuses = "
        '["2XX", 400, 401, 403, 404, 409, "5XX"]\n'
    )
    # cwd: schemathesis keeps its example database under ./.schemathesis, and reads its
    # configuration from ./schemathesis.toml.
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=180, check=False, cwd=tmp_path
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "13 selected" in output or "13 total" in output, output[-3000:]
    assert TOKEN not in output.replace(f"Bearer {TOKEN}", "")
