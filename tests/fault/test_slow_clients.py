"""Scenario 10: slow clients on both listeners while signed webhooks flow."""

from __future__ import annotations

import statistics
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from convsync.settings import Settings
from deploy.simulator.webhooks import WebhookSender
from tests.fault.harness import (
    ADMIN_TOKEN,
    SECRET,
    Load,
    Pipeline,
    assert_exact,
    check,
    comparison_figures,
    load_figures,
    make_bodies,
    truth_of,
    wait_caught_up,
    write_result,
)
from tests.producers.webhook.slow_clients import (
    Slowloris,
    body_trickle,
    header_trickle,
    in_a_process,
)

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.integration]

PAGES = ["1001", "1002", "1003"]
DEADLINE_S = 4.0  # headers and body, both listeners
SLACK_S = 2.0
TRICKLE_S = 40.0


def admin_answers(url: str, seconds: float) -> list[tuple[int, float]]:
    """GET ``url`` with the admin token once a second for ``seconds``: (status, latency)."""
    out: list[tuple[int, float]] = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})  # noqa: S310
        began = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - our own server
                out.append((int(r.status), time.monotonic() - began))
        except urllib.error.HTTPError as e:
            out.append((int(e.code), time.monotonic() - began))
        except OSError:
            out.append((0, time.monotonic() - began))
        time.sleep(1.0)
    return out


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def test_slow_clients_on_both_listeners(shared: Settings, scenario_logs: Path) -> None:
    began = time.monotonic()
    sender = WebhookSender(SECRET, seed=10)
    everything = make_bodies(sender, PAGES, 2000)
    quiet_bodies, bodies = everything[:500], everything[500:]
    env = {
        "CONVSYNC_GATEWAY_HEADER_TIMEOUT": str(DEADLINE_S),
        "CONVSYNC_GATEWAY_BODY_TIMEOUT": str(DEADLINE_S),
    }
    with Pipeline(shared, scenario_logs, env_for={"gateway": env}) as pipe:
        pipe.start("gateway", "materializer")
        # The baseline of the same run: webhooks alone.
        quiet = Load(f"{pipe.gateway_url}/webhook", quiet_bodies, rate=50)
        quiet.run_blocking(120)
        slow = Slowloris(
            [
                header_trickle("webhook port, headers", pipe.gateway_port),
                body_trickle("webhook port, body", pipe.gateway_port, b"/webhook", b"text/json"),
                header_trickle("admin port, headers", pipe.admin_port, b"/admin/login"),
                body_trickle(
                    "admin port, login body",
                    pipe.admin_port,
                    b"/admin/login",
                    b"application/x-www-form-urlencoded",
                ),
            ],
            per_kind=75,
        )
        trickling = in_a_process(slow, TRICKLE_S)
        time.sleep(3.0)  # every slow connection open before the first webhook
        load = Load(f"{pipe.gateway_url}/webhook", bodies, rate=50)
        load.start()
        admin = admin_answers(f"{pipe.admin_url}/admin/openapi.yaml", 25.0)
        load.join(180)
        slow = trickling.result(timeout=TRICKLE_S + 60)
        wait_caught_up(shared, pipe.group, timeout=180)
        result = check(shared, truth_of([*quiet.accepted, *load.accepted]))
        dead = pipe.dead()
    latencies = sorted(load.latencies)
    p99 = statistics.quantiles(latencies, n=100, method="inclusive")[98]
    quiet_p99 = statistics.quantiles(quiet.latencies, n=100, method="inclusive")[98]
    summary = slow.summary()
    ended = [e for e in slow.ended if e.how != "still open"]
    late = [e for e in ended if not DEADLINE_S - 0.1 <= e.seconds <= DEADLINE_S + SLACK_S]
    open_too_long = [
        e for e in slow.ended if e.how == "still open" and e.seconds > DEADLINE_S + SLACK_S
    ]
    write_result(
        10,
        "Slow clients on both listeners",
        done=(
            "A gateway (webhook port and private admin port, header and body deadlines of "
            f"{DEADLINE_S:g} s) and a materializer on fresh topics of the shared stack. From "
            "a process of their own, 300 connections trickle a request one byte a second: "
            "75 send webhook headers that never end, 75 a webhook body announced as 100 kB, "
            "75 admin headers, 75 a login form body; each is opened again when the gateway "
            "closes it. Meanwhile signed webhooks are posted at 50/s (retried like Meta "
            "until 200) and the admin API is asked once a second with the token. Before "
            "the slow clients come, 500 webhooks at the same rate give the baseline of "
            "the same run. Postgres is then compared with the truth of both."
        ),
        scale=(
            "500 webhook bodies alone, then 1500 at 50/s with 300 trickling connections "
            f"for {TRICKLE_S:g} s, "
            f"deadlines of {DEADLINE_S:g} s (the defaults are 10 s for headers, 30 s for a body)"
        ),
        figures={
            **load_figures(load),
            "webhook answer p50 (ms)": ms(statistics.median(latencies)),
            "webhook answer p99 (ms)": ms(p99),
            "webhook answer max (ms)": ms(latencies[-1]),
            "baseline (no slow clients) p50 / p99 (ms)": (
                f"{ms(statistics.median(quiet.latencies))} / {ms(quiet_p99)}"
            ),
            "p99 with slow clients / baseline p99": round(p99 / quiet_p99, 2),
            **{f"slow: {kind}": figures for kind, figures in summary.items()},
            "slow connections closed past their deadline": len(late),
            "admin API answers during the run": dict(
                sorted((str(s), n) for s, n in Counter(a for a, _ in admin).items())
            ),
            "admin API answer max (ms)": ms(max(t for _, t in admin)),
            "components that died": dead,
            **comparison_figures(result),
        },
        seconds=time.monotonic() - began,
    )
    assert_exact(result)
    assert load.gave_up == 0 and len(load.accepted) == len(bodies)
    assert len(quiet.accepted) == len(quiet_bodies)
    assert dead == []
    assert late == [] and open_too_long == [], (late[:5], open_too_long[:5])
    for kind, figures in summary.items():
        assert figures["connections"] >= 2 * 75, (kind, figures)
        # Headers that never end: cut off silently; a body too slow: 408, then closed.
        answer = "closed" if "headers" in kind else "HTTP/1.1 408 Request Timeout"
        assert set(figures["ended"]) <= {answer, "still open"}, (kind, figures)  # type: ignore[arg-type]
    assert {a for a, _ in admin} == {200}, admin
