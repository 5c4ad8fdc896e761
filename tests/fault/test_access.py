"""Scenario 7: nobody let in without credentials; no secret in any log of the whole run."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from admin.status import collect
from cli.demo import crawl_done
from convsync.settings import Settings
from deploy.simulator.graph_api import GraphWorld
from deploy.simulator.webhooks import WebhookSender, signature
from tests.consumers.helpers import wait_for
from tests.fault.harness import (
    ADMIN_TOKEN,
    SECRET,
    SECRETS_SEEN,
    VERIFY_TOKEN,
    Load,
    Pipeline,
    Truth,
    assert_exact,
    check,
    comparison_figures,
    make_bodies,
    scan_secrets,
    truth_of,
    wait_caught_up,
    write_result,
)

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.integration]


def call(
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> int:
    """Return the HTTP status of one request."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - our own server
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_refused_without_credentials_and_no_secret_logged(
    shared: Settings, scenario_logs: Path, log_root: Path
) -> None:
    began = time.monotonic()
    world = GraphWorld.generate(seed=77, pages=1, conversations=40, max_messages=4)
    page = world.page_ids[0]
    psid = next(c.psid for c in world.conversations[page] if c.psid)
    sender = WebhookSender(SECRET, seed=7)
    bodies = make_bodies(sender, [page], 200, known={page: [psid]})
    with Pipeline(shared, scenario_logs, world=world) as pipe:
        pipe.start("gateway", "crawler-1", "materializer")
        public = pipe.gateway_url
        base = pipe.admin_url
        hook = f"{public}/webhook"
        raw = bodies[0].signed.raw
        good = bodies[0].signed.headers
        webhook = {
            "no signature": call(hook, method="POST", data=raw, headers={}),
            "wrong signature": call(
                hook,
                method="POST",
                data=raw,
                headers={**good, "X-Hub-Signature-256": signature("guess", raw)},
            ),
            "signature of other bytes": call(hook, method="POST", data=raw + b" ", headers=good),
            "verify with a wrong token": call(
                f"{public}/webhook?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=42"
            ),
            "verify with the right token": call(
                f"{public}/webhook?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}"
                "&hub.challenge=42"
            ),
        }
        routes = {
            "GET /admin/pages/{p}/conversations": ("GET", f"/admin/pages/{page}/conversations"),
            "GET /admin/conversations/{p}/{u}": ("GET", f"/admin/conversations/{page}/{psid}"),
            "GET /admin/dashboard/data": ("GET", "/admin/dashboard/data"),
            "GET /admin/dashboard": ("GET", "/admin/dashboard"),
            "POST /admin/pages/{p}/sync": ("POST", f"/admin/pages/{page}/sync"),
        }
        # The public port has none of it, with the right token or without.
        right = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        on_public: dict[str, int] = {
            name: call(
                public + path,
                method=method,
                headers=right,
                data=b"{}" if method == "POST" else None,
            )
            for name, (method, path) in {
                **routes,
                "GET /metrics": ("GET", "/metrics"),
                "GET /dashboard": ("GET", "/dashboard"),
            }.items()
        }
        admin: dict[str, dict[str, int]] = {}
        for name, (method, path) in routes.items():
            data = b"{}" if method == "POST" else None
            json_type = {"Content-Type": "application/json"} if data else {}
            admin[name] = {
                "no token": call(base + path, method=method, data=data, headers=json_type),
                "wrong token": call(
                    base + path,
                    method=method,
                    data=data,
                    headers={**json_type, "Authorization": "Bearer wrong-token"},
                ),
                "token in the query": call(
                    f"{base}{path}?token={ADMIN_TOKEN}", method=method, data=data, headers=json_type
                ),
                "token as another key": call(
                    f"{base}{path}?x={ADMIN_TOKEN}", method=method, data=data, headers=json_type
                ),
            }
        dashboard_redirect = call(f"{base}/dashboard")
        # The right token works: it starts the crawl of the page (the positive control).
        sync = call(
            f"{base}/admin/pages/{page}/sync",
            method="POST",
            data=b'{"full": true}',
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        load = Load(hook, bodies, rate=100)
        load.start()
        load.join(120)
        wait_for(lambda: crawl_done(collect(shared), [page]), timeout=120, what="the crawl")
        wait_caught_up(shared, pipe.group, timeout=120)
        listed = call(
            f"{base}/admin/pages/{page}/conversations",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        truth = Truth(
            messages={(a, b, c, d, e) for a, b, c, d, e in world.expected(page)["messages"]}
        )
        hooks = truth_of(load.accepted)
        truth.messages |= hooks.messages
        truth.reads = hooks.reads
        result = check(shared, truth)
    # Every log file of the whole session, every scenario so far included.
    everything = sorted(p for p in log_root.rglob("*") if p.is_file() and p.suffix == ".log")
    files, lines, hits = scan_secrets(everything, sorted(SECRETS_SEEN))
    write_result(
        7,
        "Access: credentials refused, no secret in any log",
        done=(
            "A gateway (its private listener serving the admin API and dashboard under "
            "/admin, and the metrics), a crawler and a materializer on fresh topics of the "
            "shared stack. Every admin route, /metrics and /dashboard asked on the public "
            "webhook port with the right token (404: not there). Webhooks without, with "
            "a wrong, or with a mismatched signature; the verify handshake with a wrong "
            "token; every admin route and the dashboard without a token, with a wrong "
            "bearer token, and with the right token in the query string. Then the right "
            "token starts a crawl, webhooks flow, and every log file of the whole fault run "
            "(all scenarios before this one, DEBUG logs of the bad-input gateway included) "
            "is scanned for the app secret, the verify token, the admin token and every "
            "page token."
        ),
        scale="200 webhook bodies, a 40-conversation crawl; the scan covers the whole run",
        figures={
            "webhook answers": webhook,
            "admin routes on the public port (right token)": on_public,
            **{f"{k} answers": v for k, v in admin.items()},
            "GET /dashboard (redirect to the login page)": dashboard_redirect,
            "sync with the right token": sync,
            "list with the right token": listed,
            "log files / lines scanned (whole run)": f"{files} / {lines}",
            "distinct secrets searched": len(SECRETS_SEEN),
            "secret occurrences found": len(hits),
            **comparison_figures(result),
        },
        seconds=time.monotonic() - began,
    )
    assert webhook["no signature"] == webhook["wrong signature"] == 403
    assert webhook["signature of other bytes"] == webhook["verify with a wrong token"] == 403
    assert webhook["verify with the right token"] == 200
    assert set(on_public.values()) == {404}, on_public
    for name, answers in admin.items():
        assert answers["no token"] == 401, (name, answers)
        assert answers["wrong token"] == 403, (name, answers)
        assert answers["token in the query"] == 400, (name, answers)
        assert answers["token as another key"] == 400, (name, answers)
    assert sync == 202 and listed == 200
    assert hits == [], hits
    assert files >= 3
    assert_exact(result)
