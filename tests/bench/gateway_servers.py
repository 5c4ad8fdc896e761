"""The servers bench_gateway.py compares, started as processes and waited for.

The bare aiohttp handler (optionally on uvloop), ``convsync gateway`` of this tree, the
gateway with publishing replaced by a no-op (``--decompose``), and a baseline: an older
commit exported and built in a venv of its own (``--baseline-ref``) or a source tree
(``--baseline-tree``).

Separate from the bench's flow (``bench_gateway.py``) and from the load
(``gateway_load.py``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from deploy.ports import free_ports

REPO = Path(__file__).resolve().parents[2]

BARE_SERVER = """
import sys
from aiohttp import web

async def handler(request):
    await request.read()
    return web.Response(text="EVENT_RECEIVED")

app = web.Application(client_max_size=1024 * 1024 + 1)
app.router.add_post("/webhook", handler)
app.router.add_get("/readyz", lambda r: handler(r))
loop = None
if len(sys.argv) > 2:
    import uvloop
    loop = uvloop.new_event_loop()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=loop)
"""
# The gateway with Publisher.publish replaced by a no-op: every other step of a POST
# (read, HMAC, parse, map, serialize, metrics, response) runs as in `convsync gateway`.
# Only for --decompose: it splits the gateway's cost into "Python per request" and "Kafka".
NO_KAFKA_GATEWAY = """
import sys
from producers.webhook.publisher import Publisher

async def publish(self, records, extra=()):
    return 0.0

Publisher.publish = publish
from convsync.settings import Settings
from producers.webhook.server import serve
from producers.webhook.settings import GatewaySettings

serve(Settings(), GatewaySettings(port=int(sys.argv[1])))
"""


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - local http
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    raise TimeoutError(url)


def build_baseline(ref: str, where: Path) -> tuple[Path, str]:
    """Export commit ``ref`` into ``where``/src and install it into ``where``/venv.

    Returns the venv's bin folder and the full commit id. A folder already holding that
    commit's build is reused. The install builds the commit as a new user would
    (``pip install``), compiled extensions included.
    """
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    src, venv, stamp = where / "src", where / "venv", where / "built"
    if stamp.exists() and stamp.read_text() == commit:
        return venv / "bin", commit
    shutil.rmtree(where, ignore_errors=True)
    src.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    print(f"building the gateway of {commit[:7]} in {where} (pip install, a minute or two)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(src)], check=True, cwd=where)
    stamp.write_text(commit)
    return venv / "bin", commit


@dataclass
class Servers:
    """The processes started, by name, and the servers to load in the order of a round:
    ``(name, url, port)``."""

    procs: dict[str, subprocess.Popen[bytes]]
    order: list[tuple[str, str, int]]


def start_servers(
    args: argparse.Namespace,
    env: dict[str, str],
    *,
    baseline: tuple[str, Path, Path] | None,
) -> Servers:
    """Start every server ``args`` asks for (the gateways with ``env``); ``baseline`` is
    the name, bin folder and build folder of ``--baseline-ref``. Not waited for: see
    :func:`wait_all`."""
    url = "http://127.0.0.1:{}".format
    bare_port, gw_port = free_ports(), free_ports()
    procs = {"bare aiohttp": subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(bare_port)])}
    order = [("bare aiohttp", url(bare_port), bare_port)]
    if args.bare_uvloop:
        uv_port = free_ports()
        procs["bare+uvloop"] = subprocess.Popen(
            [sys.executable, "-c", BARE_SERVER, str(uv_port), "uvloop"]
        )
        order.append(("bare+uvloop", url(uv_port), uv_port))
    procs["gateway+kafka"] = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "convsync"),
            "gateway",
            "--port",
            str(gw_port),
            "--workers",
            str(args.workers),
            "--admin-port",
            str(free_ports()),
        ],
        env=env,
        cwd=REPO,
    )
    order.append(("gateway+kafka", url(gw_port), gw_port))
    if baseline is not None:
        baseline_name, baseline_bin, baseline_dir = baseline
        base_port = free_ports()
        procs[baseline_name] = subprocess.Popen(
            [str(baseline_bin / "convsync"), "gateway", "--port", str(base_port)],
            # Its own code only: nothing of this tree on its path.
            env={k: v for k, v in env.items() if k != "PYTHONPATH"},
            cwd=baseline_dir,
        )
        order.append((baseline_name, url(base_port), base_port))
    if args.baseline_tree:
        tree_port = free_ports()
        procs["baseline gw"] = subprocess.Popen(
            [sys.executable, "-m", "cli", "gateway", "--port", str(tree_port)],
            # CONVSYNC_ADMIN_PORT: a tree with the private listener must not take 8081.
            env={**env, "PYTHONPATH": str(args.baseline_tree), "CONVSYNC_ADMIN_PORT": "0"},
            cwd=args.baseline_tree,
        )
        order.append(("baseline gw", url(tree_port), tree_port))
    if args.decompose:
        nk_port = free_ports()
        procs["gateway no kafka"] = subprocess.Popen(
            [sys.executable, "-c", NO_KAFKA_GATEWAY, str(nk_port)], env=env, cwd=REPO
        )
        order.append(("gateway no kafka", url(nk_port), nk_port))
    return Servers(procs, order)


def wait_all(servers: Servers) -> None:
    """Wait until every server answers ``/readyz``."""
    for name, base_url, _ in servers.order:
        wait_ready(base_url + "/readyz", servers.procs[name])


def stop_all(servers: Servers) -> None:
    """Terminate every server and wait for it."""
    for proc in servers.procs.values():
        proc.terminate()
        proc.wait(timeout=30)
