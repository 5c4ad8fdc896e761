"""The fake Graph API's faults and call limits: what a call meets before it is served.

:class:`Faults` are the switches a test flips (5xx, broken JSON, throttling, per-page
and app-wide budgets, outages, failing threads, refused profiles); :func:`admit` applies
them and the rate limits to one call, counting it in :class:`PageCalls` and
:class:`AppCalls`, and answers with Meta's error or the usage headers. Separate from
the world's data (:mod:`deploy.simulator.graph_world`) and from the HTTP handlers
(:mod:`deploy.simulator.graph_api`) so the limit rules read in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from aiohttp import web

THROTTLE_CODES: Final = (4, 17, 32, 613, 80006)


@dataclass(slots=True)
class Faults:
    """Switchable faults; counters are per page so runs are reproducible."""

    error_5xx_every: int = 0
    broken_json_every: int = 0
    throttle_every: int = 0
    regain_minutes: float = 0.01
    rate_per_page: float | None = None
    permanent_code: int | None = None
    details_limit: int | None = None
    short_pages: bool = False
    # node id (page or thread) -> another base URL: the paging.next of that node's list
    # points there (same path and query) from the page starting at foreign_next_from.
    foreign_next: dict[str, str] = field(default_factory=dict)
    foreign_next_from: int = 0
    # An app-wide budget (every page's calls): a bucket of app_budget calls refilled at
    # app_rate per second. Its use is reported in X-App-Usage; a call finding it empty
    # is refused with code 4 ("Application request limit reached").
    app_budget: int | None = None
    app_rate: float = 1.0
    # Every call of a page after its first fail_after_calls answers 500 (a Meta outage
    # that outlasts the crawler's retries: the crawl fails partway and must resume).
    fail_after_calls: int | None = None
    # thread id -> "permanent" (code 100, as for a conversation Meta cannot read) or
    # "transient" (500 every time): the messages of that one conversation keep failing.
    failing_threads: dict[str, str] = field(default_factory=dict)
    # Users whose User Profile API answer is a permission error (code 230, like a user
    # Meta will not describe to this app); their calls are counted all the same.
    denied_profiles: list[str] = field(default_factory=list)


@dataclass(slots=True)
class AppCalls:
    """The app-wide budget's bucket and what it refused."""

    tokens: float = 0.0
    last_refill: float | None = None
    served: int = 0
    throttled: int = 0
    peak_percent: float = 0.0


@dataclass(slots=True)
class PageCalls:
    """One page's calls: counted, throttled, served, and its rate bucket."""

    calls: int = 0
    blocked_until: float = 0.0
    tokens: float = 0.0
    last_refill: float = 0.0
    throttled: int = 0
    served: int = 0


def graph_error(status: int, code: int, message: str, **headers: str) -> web.Response:
    """Return a Graph API error answer (``{"error": {...}}``) with ``headers``."""
    body = {"error": {"message": message, "type": "OAuthException", "code": code}}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def usage_headers(
    page_id: str, pct: int, regain_minutes: float, *, app_pct: int | None = None
) -> dict[str, str]:
    """Return the X-App-Usage and X-Business-Use-Case-Usage headers of a call."""
    a = pct if app_pct is None else app_pct
    app: dict[str, Any] = {"call_count": a, "total_cputime": a // 2, "total_time": a // 2}
    if app_pct is not None and app_pct >= 100:
        app["estimated_time_to_regain_access"] = regain_minutes
    buc = {
        page_id: [
            {
                "type": "messenger",
                "call_count": pct,
                "total_cputime": pct // 2,
                "total_time": pct // 2,
                "estimated_time_to_regain_access": regain_minutes,
            }
        ]
    }
    return {
        "X-App-Usage": orjson.dumps(app).decode(),
        "X-Business-Use-Case-Usage": orjson.dumps(buc).decode(),
    }


def admit(
    faults: Faults, calls: dict[str, PageCalls], app: AppCalls, page_id: str, now: float
) -> web.Response | dict[str, str]:
    """Apply faults and rate limits to one call of ``page_id`` at ``now`` (the server's
    clock); return an error or usage headers."""
    st = calls.setdefault(page_id, PageCalls())
    st.calls += 1
    if faults.permanent_code is not None:
        return graph_error(
            400, faults.permanent_code, f"(#{faults.permanent_code}) permanent fault"
        )
    if faults.fail_after_calls is not None and st.calls > faults.fail_after_calls:
        return graph_error(500, 2, "Service temporarily unavailable (fail_after_calls)")
    app_pct = app_admit(faults, app, now)
    if isinstance(app_pct, web.Response):
        st.throttled += 1
        return app_pct
    if now < st.blocked_until:
        st.throttled += 1
        regain = (st.blocked_until - now) / 60
        return graph_error(
            400,
            613,
            "Calls to this api have exceeded the rate limit.",
            **usage_headers(page_id, 100, regain),
        )
    if faults.throttle_every and st.calls % faults.throttle_every == 0:
        st.throttled += 1
        st.blocked_until = now + faults.regain_minutes * 60
        code = THROTTLE_CODES[(st.calls // faults.throttle_every) % len(THROTTLE_CODES)]
        return graph_error(
            400,
            code,
            "Application request limit reached",
            **usage_headers(page_id, 100, faults.regain_minutes),
        )
    pct = 10
    if faults.rate_per_page:
        rate = faults.rate_per_page
        if st.last_refill == 0.0:
            st.tokens, st.last_refill = rate, now
        st.tokens = min(rate, st.tokens + (now - st.last_refill) * rate)
        st.last_refill = now
        if st.tokens < 1.0:
            st.throttled += 1
            regain = (1.0 - st.tokens) / rate / 60
            return graph_error(
                400,
                80006,
                "There have been too many messenger api calls to this page.",
                **usage_headers(page_id, 100, regain),
            )
        st.tokens -= 1.0
        pct = int(100 * (1 - st.tokens / rate))
    if faults.error_5xx_every and st.calls % faults.error_5xx_every == 0:
        if (st.calls // faults.error_5xx_every) % 2:
            return graph_error(500, 2, "Service temporarily unavailable")
        return web.Response(status=503, text="upstream unavailable")
    st.served += 1
    return usage_headers(page_id, pct, 0, app_pct=app_pct)


def app_admit(faults: Faults, app: AppCalls, now: float) -> web.Response | int | None:
    """Take one call from the app-wide budget; return its use in percent (None: no
    budget) or the error refusing the call."""
    if not faults.app_budget:
        return None
    budget, rate = faults.app_budget, faults.app_rate
    if app.last_refill is None:
        app.tokens, app.last_refill = float(budget), now
    app.tokens = min(float(budget), app.tokens + (now - app.last_refill) * rate)
    app.last_refill = now
    if app.tokens < 1.0:
        app.throttled += 1
        regain = (1.0 - app.tokens) / rate / 60
        return graph_error(
            400,
            4,
            "(#4) Application request limit reached",
            **usage_headers("app", 100, regain, app_pct=100),
        )
    app.tokens -= 1.0
    app.served += 1
    pct = 100 * (1 - app.tokens / budget)
    app.peak_percent = max(app.peak_percent, pct)
    return int(pct)
