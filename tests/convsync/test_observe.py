"""convsync.observe: /healthz follows the work loop's heartbeat, /metrics the registry, and
an address that cannot be served is an error only when the operator gave it."""

from __future__ import annotations

import logging
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter

from convsync.errors import ConfigError
from convsync.observe import Heartbeat, Served, parse_addr, serve_in_thread, start_observer


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - our test URL
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port on 127.0.0.1 that something else already listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_addresses() -> None:
    assert parse_addr("127.0.0.1:9463", setting="S") == ("127.0.0.1", 9463)
    assert parse_addr("[::1]:0", setting="S") == ("::1", 0)
    assert parse_addr(" off ", setting="S") is None
    for bad in ("9463", "host:", ":9463", "host:70000", "host:http"):
        with pytest.raises(ConfigError, match="S must be host:port"):
            parse_addr(bad, setting="S")


def test_healthz_goes_503_when_the_loop_stops_beating_and_back_to_200() -> None:
    registry = CollectorRegistry()
    seen = Counter("observe_test_things", "Things.", registry=registry)
    seen.inc(3)
    beat = Heartbeat(0.5)
    served: Served = serve_in_thread(("127.0.0.1", 0), beat, registry)
    try:
        base = f"http://127.0.0.1:{served.port}"
        beat.beat("consuming")
        status, body = get(f"{base}/healthz")
        assert status == 200
        assert orjson.loads(body)["state"] == "consuming"
        time.sleep(0.7)  # the loop is stuck: no beat for longer than stale_after
        status, body = get(f"{base}/healthz")
        assert status == 503
        assert "work loop stuck" in orjson.loads(body)["problem"]
        beat.beat()
        assert get(f"{base}/healthz")[0] == 200
        status, body = get(f"{base}/metrics")
        assert status == 200
        assert b"observe_test_things_total 3.0" in body
    finally:
        served.close()


def test_a_failed_check_is_unhealthy_even_while_the_loop_beats() -> None:
    problem: list[str | None] = [None]
    beat = Heartbeat(60, check=lambda: problem[0])
    assert beat.report()[0]
    problem[0] = "producer failed"
    ok, body = beat.report()
    assert not ok
    assert body["problem"] == "producer failed"


def test_a_given_address_in_use_is_an_error(held_port: int) -> None:
    with pytest.raises(ConfigError, match="cannot serve /metrics"):
        start_observer(
            f"127.0.0.1:{held_port}", default="127.0.0.1:0", setting="S", heartbeat=Heartbeat()
        )


def test_the_default_address_in_use_runs_without_the_server(
    held_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="convsync.observe"):
        served = start_observer(
            None, default=f"127.0.0.1:{held_port}", setting="CONVSYNC_X_ADDR", heartbeat=Heartbeat()
        )
    assert served is None
    assert "CONVSYNC_X_ADDR" in caplog.text


def test_off_serves_nothing() -> None:
    assert start_observer("off", default="127.0.0.1:0", setting="S", heartbeat=Heartbeat()) is None
