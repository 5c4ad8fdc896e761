"""HTTP deadlines of `convsync gateway`: slow clients are cut off, webhooks keep flowing.

Against the real gateway process and the real Kafka. The deadlines are set short (3 s) so
that every trickling connection reaches its deadline several times within the test.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest
import uvloop

from convsync.settings import Settings
from deploy.simulator.webhooks import WebhookSender
from tests.producers.webhook.helpers import SECRET, GatewayProcess, read_events
from tests.producers.webhook.slow_clients import (
    Slowloris,
    TimedLoad,
    body_trickle,
    header_trickle,
    in_a_process,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HEADERS_S = 3.0
BODY_S = 3.0
# A closed connection is seen within this of its deadline (the machine is shared).
SLACK_S = 1.5


def deadlines(headers: float, body: float, keepalive: float) -> dict[str, str]:
    """The gateway's environment for these deadlines (seconds)."""
    return {
        "CONVSYNC_GATEWAY_HEADER_TIMEOUT": str(headers),
        "CONVSYNC_GATEWAY_BODY_TIMEOUT": str(body),
        "CONVSYNC_GATEWAY_KEEPALIVE_TIMEOUT": str(keepalive),
    }


def test_300_trickling_connections_are_cut_off_and_webhooks_stay_fast(
    kafka_settings: Settings, gateway_process: Callable[..., GatewayProcess]
) -> None:
    # aiohttp's keep-alive deadline also bounds the first request's headers: longer here.
    gw = gateway_process(kafka_settings, extra_env=deadlines(HEADERS_S, BODY_S, 10.0))
    gw.start()
    sender = WebhookSender(SECRET, seed=88)
    bodies = [sender.batch([str(300 + i % 7)], items_per_page=1) for i in range(600)]
    quiet = TimedLoad(gw.url + "/webhook", bodies[:150], rate=30.0)
    uvloop.run(quiet.run())  # the same run's baseline, for the failure message
    slow = Slowloris(
        [
            header_trickle("headers", gw.port),
            body_trickle("body", gw.port, b"/webhook", b"application/json"),
        ],
        per_kind=150,
    )
    load = TimedLoad(gw.url + "/webhook", bodies[150:], rate=30.0)
    trickling = in_a_process(slow, 18.0)
    time.sleep(3.0)  # the process has started and opened every slow connection
    uvloop.run(load.run())
    slow = trickling.result(timeout=60)
    # Every webhook acknowledged, fast, and in Kafka.
    assert load.statuses == {200: len(bodies) - 150}, load.statuses
    p99 = load.percentile(99)
    assert p99 < 0.100, (
        f"p99 {p99 * 1000:.1f} ms (without slow clients: {quiet.percentile(99) * 1000:.1f})"
    )
    assert len(read_events(kafka_settings)) == len(bodies)
    # Every trickling connection was closed at its deadline, the slow bodies with a 408.
    summary = slow.summary()
    assert summary["headers"]["connections"] >= 300, summary  # 150 at a time, reopened
    assert summary["body"]["connections"] >= 300, summary
    for e in slow.ended:
        if e.how == "still open":
            assert e.seconds < HEADERS_S + SLACK_S, e  # opened again near the end of the run
            continue
        assert e.how == ("closed" if e.kind == "headers" else "HTTP/1.1 408 Request Timeout"), e
        assert HEADERS_S - 0.1 <= e.seconds <= HEADERS_S + SLACK_S, e
    log = gw.log_file.read_text()
    assert "body not received in 3s" in log


def _ended_after(sock: socket.socket, request: bytes) -> tuple[float, bytes]:
    """Send ``request``, read until the server closes; return (seconds, what was read)."""
    began = time.monotonic()
    sock.settimeout(30)
    sock.sendall(request)
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return time.monotonic() - began, got


def test_silent_and_idle_connections_are_closed(
    kafka_settings: Settings, gateway_process: Callable[..., GatewayProcess]
) -> None:
    headers, keepalive = 2.0, 4.0
    gw = gateway_process(kafka_settings, extra_env=deadlines(headers, 30.0, keepalive))
    gw.start()
    for port in (gw.port, gw.admin_port):
        # Connected, nothing sent: the header deadline runs from the connection's opening.
        with socket.create_connection(("127.0.0.1", port)) as sock:
            seconds, got = _ended_after(sock, b"")
        assert got == b"" and headers - 0.1 <= seconds <= headers + SLACK_S, seconds
        # One request answered, then idle: closed after the keep-alive deadline.
        with socket.create_connection(("127.0.0.1", port)) as sock:
            seconds, got = _ended_after(sock, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 "), got
        assert keepalive - 0.1 <= seconds <= keepalive + SLACK_S, seconds
