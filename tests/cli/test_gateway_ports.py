"""`convsync gateway`: the public port serves the webhook and the probes, nothing else;
the admin API, the dashboard and the metrics are on the private listener."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from convsync.settings import Settings
from deploy.simulator.webhooks import WebhookSender, post
from tests.producers.webhook.helpers import REPO, SECRET, GatewayProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def status(url: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> int:
    data = b"token=x" if method == "POST" else None
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - our own server
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: object, **_kwargs: object) -> None:
        return None


def test_the_public_port_serves_only_the_webhook_and_the_probes(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    token = secrets.token_urlsafe(32)
    gw = GatewayProcess(
        kafka_settings, tmp_path / "gateway.log", extra_env={"CONVSYNC_ADMIN_TOKEN": token}
    )
    gw.start()
    try:
        body = WebhookSender(SECRET, seed=3).batch(["77"], items_per_page=1)
        assert post(gw.url + "/webhook", body) == 200
        assert status(gw.url + "/healthz") == 200
        assert status(gw.url + "/readyz") == 200
        bearer = {"Authorization": f"Bearer {token}"}
        for path, method in (
            ("/metrics", "GET"),
            ("/dashboard", "GET"),
            ("/admin/dashboard", "GET"),
            ("/admin/dashboard/data", "GET"),
            ("/admin/openapi.yaml", "GET"),
            ("/admin/pages/77/conversations", "GET"),
            ("/admin/login", "POST"),
            ("/admin/pages/77/sync", "POST"),
        ):
            assert status(gw.url + path, method=method, headers=bearer) == 404, path
        # The private listener: all of it, and no webhook.
        with urllib.request.urlopen(gw.admin_url + "/metrics", timeout=10) as r:  # noqa: S310
            metrics = r.read().decode()
        assert 'convsync_gateway_requests_total{route="/webhook",status="200"} 1.0' in metrics
        assert status(gw.admin_url + "/admin/openapi.yaml", headers=bearer) == 200
        assert status(gw.admin_url + "/admin/openapi.yaml") == 401
        opener = urllib.request.build_opener(NoRedirect)
        try:
            opener.open(gw.admin_url + "/dashboard", timeout=10)
            redirected = 200
        except urllib.error.HTTPError as e:
            redirected = e.code
        assert redirected == 302
        assert status(gw.admin_url + "/webhook", method="POST") == 404
    finally:
        assert gw.stop() == 0
    log = gw.log_file.read_text()
    assert f"admin API and dashboard on http://127.0.0.1:{gw.admin_port}/admin/" in log
    assert f"private listener on 127.0.0.1:{gw.admin_port}" in log
    assert token not in log


def gateway_with_token(token: str, settings: Settings) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "CONVSYNC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CONVSYNC_TOPIC_PREFIX": settings.topic_prefix,
        "CONVSYNC_APP_SECRET": SECRET,
        "CONVSYNC_ADMIN_TOKEN": token,
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "cli", "gateway", "--port", "0", "--admin-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        env=env,
    )


@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("CHANGE-ME", "has 9 characters, at least 32"),
        ("change-me-change-me-change-me-change-me", "is a placeholder"),
        ("a" * 40, "too few characters"),
    ],
)
def test_a_guessable_admin_token_stops_the_gateway_at_start(
    kafka_settings: Settings, token: str, why: str
) -> None:
    done = gateway_with_token(token, kafka_settings)
    assert done.returncode == 2, done.stdout + done.stderr
    out = " ".join((done.stdout + done.stderr).split())
    assert "gateway refused to start" in out and why in out, out
    assert "secrets.token_urlsafe(32)" in out
    assert token not in out
