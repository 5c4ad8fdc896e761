"""The gateway's private listener: admin API, dashboard and metrics, composed here.

The webhook component (``producers/webhook``) serves the public port and does not import
``admin/``; this top layer builds the second listener's application from both and hands
it to the gateway's runner as a :class:`~producers.webhook.server.PrivateListener`.
"""

from __future__ import annotations

import functools

from aiohttp import web

from admin import AdminSettings, mount_admin
from convsync.http import Deadlines
from convsync.settings import Settings
from producers.webhook.metrics import Metrics, metrics_page
from producers.webhook.server import PrivateListener


def private_app(
    settings: Settings, admin: AdminSettings, deadlines: Deadlines, metrics: Metrics
) -> web.Application:
    """Return the private listener's application for one gateway process.

    ``/admin/...`` (the API and the dashboard, behind the admin token), ``/dashboard``
    and ``/`` (redirects to the dashboard), and ``/metrics`` (Prometheus; every worker's
    counts with ``--workers N``, through the workers' shared directory).
    Raises :class:`ConfigError` when the admin token is one an attacker could guess.
    """
    app = web.Application()
    mount_admin(app, settings, admin, deadlines)
    app.router.add_get("/metrics", metrics_page(metrics))
    return app


def private_listener(
    settings: Settings, admin: AdminSettings, deadlines: Deadlines
) -> PrivateListener:
    """Return the private listener of ``convsync gateway`` on ``admin.host:admin.port``."""
    return PrivateListener(
        admin.host, admin.port, functools.partial(private_app, settings, admin, deadlines)
    )
