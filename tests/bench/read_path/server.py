"""The admin API of the benchmark: the admin application alone on an aiohttp server (the
admin listener), in a child process of its own, on the data set's schema."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import SecretStr

from convsync.settings import Settings
from deploy.ports import free_ports
from tests.bench.read_path.catalog import TOKEN
from tests.consumers.procs import REPO, settings_env


def add_parser(sub: Any) -> None:
    """Add the (internal) ``serve`` subcommand."""
    p = sub.add_parser("serve", help="(internal) serve the admin app on --port")
    p.add_argument("--port", type=int, required=True)
    p.set_defaults(run=serve)


def serve(settings: Settings, args: argparse.Namespace) -> int:
    """Serve the admin application under /admin until SIGTERM."""
    from aiohttp import web

    from admin.app import make_admin_app

    settings = settings.model_copy(
        update={"admin_token": SecretStr(TOKEN), "db_schema": args.schema}
    )
    app = web.Application()
    app.add_subapp("/admin", make_admin_app(settings))
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)
    return 0


class AdminServer:
    """The ``serve`` child; ``base`` is its admin API's URL."""

    def __init__(self, settings: Settings, schema: str) -> None:
        self.port = free_ports((0,))
        self.base = f"http://127.0.0.1:{self.port}/admin"
        self.log = Path(tempfile.mkstemp(prefix="read-path-admin-", suffix=".log")[1])
        self._out = self.log.open("ab")
        env = {**settings_env(settings), "CONVSYNC_LOG_LEVEL": "WARNING"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.read_path", "--schema", schema,
             "serve", "--port", str(self.port)],
            cwd=REPO, env=env, stdout=self._out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        request = urllib.request.Request(  # noqa: S310 - our own http URL
            self.base + "/openapi.yaml", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        while True:
            try:
                with urllib.request.urlopen(request, timeout=2) as r:  # noqa: S310 - our URL
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"admin server did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        # The dashboard's first request starts its sampler and waits for a first sample
        # (a Kafka client made, ~0.2 s): once per server, not what a reader meets later.
        warm = urllib.request.Request(  # noqa: S310 - our own http URL
            self.base + "/dashboard/data", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        with urllib.request.urlopen(warm, timeout=60) as r:  # noqa: S310 - our URL
            r.read()

    def __enter__(self) -> AdminServer:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 30 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()
        with_errors = self.log.read_text(errors="replace")
        if "Traceback" in with_errors:
            print(f"admin server log ({self.log}):\n{with_errors[-3000:]}")
        self.log.unlink()
