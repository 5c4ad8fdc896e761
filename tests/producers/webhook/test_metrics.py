"""The gateway's plain-count metrics expose what prometheus_client's own objects would."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from producers.webhook.metrics import (
    _BODY_BUCKETS,
    _LATENCY_BUCKETS,
    MAX_IGNORED_FIELDS,
    OTHER_FIELD,
    Metrics,
    sharing,
)

ROUTES = st.sampled_from(["/webhook", "/healthz", "other"])
STATUSES = st.sampled_from([200, 400, 403, 404, 413, 503])
KINDS = st.sampled_from(["message", "read", "delivery", "unknown"])
WORDS = st.sampled_from(["missing", "mismatch", "changes", "other"])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("request"), ROUTES, STATUSES),
        st.tuples(st.just("event"), KINDS),
        st.tuples(st.just("signature"), WORDS),
        st.tuples(st.just("ignored"), WORDS),
        # Bounds themselves included: a value equal to a bound is in that bound's bucket.
        st.tuples(
            st.just("latency"),
            st.one_of(st.sampled_from(_LATENCY_BUCKETS), st.floats(0, 20, allow_nan=False)),
        ),
        st.tuples(
            st.just("body"),
            st.one_of(st.sampled_from(_BODY_BUCKETS), st.integers(0, 5 * 1024 * 1024)),
        ),
    ),
    max_size=60,
)


def apply(metrics: Metrics, ops: list[tuple[object, ...]]) -> None:
    for op, *args in ops:
        if op == "request":
            metrics.count_request(str(args[0]), int(args[1]))  # type: ignore[call-overload]
        elif op == "event":
            metrics.count_delivery(str(args[0]))
        elif op == "signature":
            metrics.count_signature_failure(str(args[0]))
        elif op == "ignored":
            metrics.count_ignored(str(args[0]))
        elif op == "latency":
            metrics.produce_seconds.observe(float(args[0]))  # type: ignore[arg-type]
        else:
            metrics.body_bytes.observe(float(args[0]))  # type: ignore[arg-type]


def oracle(ops: list[tuple[object, ...]]) -> str:
    """The same operations on prometheus_client's Counter and Histogram objects."""
    r = CollectorRegistry()
    requests = Counter("convsync_gateway_requests", "x", ["route", "status"], registry=r)
    events = Counter("convsync_gateway_deliveries", "x", ["platform"], registry=r)
    failures = Counter("convsync_gateway_signature_failures", "x", ["reason"], registry=r)
    ignored = Counter("convsync_gateway_ignored_entry_fields", "x", ["field"], registry=r)
    latency = Histogram(
        "convsync_gateway_produce_seconds", "x", buckets=_LATENCY_BUCKETS, registry=r
    )
    body = Histogram("convsync_gateway_body_bytes", "x", buckets=_BODY_BUCKETS, registry=r)
    for op, *args in ops:
        if op == "request":
            requests.labels(args[0], str(args[1])).inc()
        elif op == "event":
            events.labels(args[0]).inc()
        elif op == "signature":
            failures.labels(args[0]).inc()
        elif op == "ignored":
            ignored.labels(args[0]).inc()
        elif op == "latency":
            latency.observe(float(args[0]))  # type: ignore[arg-type]
        else:
            body.observe(float(args[0]))  # type: ignore[arg-type]
    return generate_latest(r).decode()


def samples(text: str) -> list[str]:
    """Sample lines, sorted, without help text and prometheus_client's _created stamps."""
    return sorted(
        line for line in text.splitlines() if not line.startswith("#") and "_created" not in line
    )


@settings(max_examples=200, deadline=None)
@given(OPS)
def test_exposition_equals_prometheus_clients_own_objects(ops: list[tuple[object, ...]]) -> None:
    metrics = Metrics()
    apply(metrics, ops)
    assert samples(metrics.render().decode()) == samples(oracle(ops))


def same_totals(text: str, expected: str) -> bool:
    """Equal samples, the float sums of merged workers to rounding (added in another order)."""

    def split(t: str) -> tuple[list[str], list[tuple[str, float]]]:
        lines = samples(t)
        sums = [line.rsplit(" ", 1) for line in lines if "_sum " in line]
        return [line for line in lines if "_sum " not in line], [(n, float(v)) for n, v in sums]

    (got, got_sums), (want, want_sums) = split(text), split(expected)
    return (
        got == want
        and [n for n, _ in got_sums] == [n for n, _ in want_sums]
        and all(
            math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
            for (_, a), (_, b) in zip(got_sums, want_sums, strict=True)
        )
    )


@settings(max_examples=50, deadline=None)
@given(OPS, OPS, OPS)
def test_workers_sum_through_the_shared_directory(
    tmp_path_factory: pytest.TempPathFactory,
    first: list[tuple[object, ...]],
    second: list[tuple[object, ...]],
    third: list[tuple[object, ...]],
) -> None:
    shared = tmp_path_factory.mktemp("shared")
    workers = [Metrics(shared), Metrics(shared)]
    apply(workers[0], first)
    apply(workers[1], second)
    workers[1].write_snapshot()
    apply(workers[1], third)  # not written yet: another worker's scrape misses it
    assert same_totals(workers[0].render().decode(), oracle(first + second))
    # A worker's own counts are always live.
    assert same_totals(workers[1].render().decode(), oracle(second + third))
    workers[0].write_snapshot()
    assert same_totals(workers[1].render().decode(), oracle(first + second + third))


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.asyncio
async def test_sharing_writes_every_second_and_when_it_stops(tmp_path: Path) -> None:
    worker, reader = Metrics(tmp_path), Metrics(tmp_path)
    line = 'convsync_gateway_deliveries_total{platform="read"} 1.0'
    async with sharing(worker):
        worker.count_delivery("read")
        assert line not in reader.render().decode()
        await asyncio.sleep(1.3)
        assert line in reader.render().decode()
        worker.count_delivery("read")
    # The last counts are written on the way out.
    assert line.replace("1.0", "2.0") in reader.render().decode()
    alone = Metrics()
    async with sharing(alone):  # without a shared directory nothing is written
        alone.count_delivery("read")
    # One file, the worker's: no temporary left, none from the Metrics without a directory.
    [only] = names(tmp_path)
    assert only.endswith(".json")


def test_ignored_field_names_are_bounded() -> None:
    metrics = Metrics()
    for i in range(1000):
        metrics.count_ignored(f"field_{i}")
        metrics.count_ignored("changes")
    assert len(metrics.ignored) <= MAX_IGNORED_FIELDS + 1
    assert sum(metrics.ignored.values()) == 2000
    assert metrics.ignored[("changes",)] == 1000
    assert metrics.ignored[(OTHER_FIELD,)] == 1000 - (MAX_IGNORED_FIELDS - 1)
