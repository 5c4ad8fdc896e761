"""Helpers of the gateway tests: read a topic back, run the gateway as a subprocess."""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from hypothesis import strategies as st
from pydantic import SecretStr

from convsync.http import SafeAccessLogger
from convsync.kafka import make_consumer, read_watermarks
from convsync.settings import Settings
from deploy.ports import free_ports
from deploy.simulator.webhooks import signature
from producers.webhook.app import install_fast_path
from producers.webhook.deliveries import map_delivery
from schemas.envelope import Envelope

SECRET = "test-app-secret-0123456789"
VERIFY_TOKEN = "test-verify-token-abcdef"
REPO = Path(__file__).resolve().parents[3]


def with_secrets(settings: Settings) -> Settings:
    """Return ``settings`` with the test app secret and verify token."""
    return settings.model_copy(
        update={"app_secret": SecretStr(SECRET), "verify_token": SecretStr(VERIFY_TOKEN)}
    )


def signed(raw: bytes) -> dict[str, str]:
    """The headers of a POST of ``raw`` signed with the test secret."""
    return {"X-Hub-Signature-256": signature(SECRET, raw), "Content-Type": "application/json"}


async def start_test_server(app: web.Application) -> TestServer:
    """Start ``app`` on a test server wired as ``convsync gateway`` serves it.

    The production access logger, and the ``POST /webhook`` fast path on its runner.
    """
    server = TestServer(app)
    # TestServer drops runner options given to __init__; start_server passes them on.
    await server.start_server(access_log_class=SafeAccessLogger)
    assert isinstance(server.runner, web.AppRunner)
    install_fast_path(server.runner)
    return server


def read_events(settings: Settings, *, timeout: float = 30.0) -> list[tuple[bytes, Envelope]]:
    """Return the events of every delivery the gateway published, as ``(key, envelope)``.

    The gateway publishes deliveries (one per entry) to ``<prefix>.deliveries``; these
    are mapped here with the mapper's own function (:func:`map_delivery`), in partition
    order, so a test of the gateway sees the events the mapper makes of its records (the
    mapper's own tests run it on Kafka: ``test_mapper.py``). A delivery the mapper could
    not map fails the test.
    """
    out: list[tuple[bytes, Envelope]] = []
    for key, value in read_records(settings, "deliveries", timeout=timeout):
        mapped = map_delivery(value)
        assert not mapped.failures, mapped.failures
        out += [(k, Envelope.from_bytes(v)) for k, v in mapped.records]
        assert all(k == key for k, _ in mapped.records)
    return out


def read_records(
    settings: Settings, suffix: str, *, timeout: float = 30.0
) -> list[tuple[bytes, bytes]]:
    """Return every record of ``<prefix>.<suffix>`` as ``(key, value)``, partition order."""
    topic = settings.topic(suffix)
    consumer = make_consumer(settings, f"read-{uuid.uuid4().hex[:8]}")
    try:
        md = consumer.list_topics(topic, timeout=10)
        partitions = sorted(md.topics[topic].partitions)
        high = {p: _high_watermark(consumer, topic, p) for p in partitions}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        position = dict.fromkeys(partitions, 0)
        out: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        while any(position[p] < high[p] for p in partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {len(out)} records; positions {position} of {high}")
            msg = consumer.poll(0.5)
            if msg is None:
                # Past a transaction's commit marker (the mapper's events): the consumer's
                # position is beyond the last record.
                for tp in consumer.position(consumer.assignment()):
                    position[tp.partition] = max(position[tp.partition], tp.offset)
                continue
            if msg.error() is not None:
                raise RuntimeError(str(msg.error()))
            out.append((msg.key() or b"", msg.value() or b""))
            position[msg.partition() or 0] = (msg.offset() or 0) + 1
        return out
    finally:
        consumer.close()


def _high_watermark(consumer: Consumer, topic: str, partition: int) -> int:
    return read_watermarks(consumer, TopicPartition(topic, partition), timeout=10)[1]


@dataclass
class GatewayProcess:
    """``convsync gateway`` in a subprocess of the test, its output in ``log_file``."""

    settings: Settings
    log_file: Path
    workers: int = 1
    produce_timeout: float = 5.0
    port: int = field(default_factory=free_ports)
    admin_port: int = field(default_factory=free_ports)
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        """The private listener: admin API, dashboard, metrics."""
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, *, timeout: float = 30.0) -> None:
        env = {
            **os.environ,
            "CONVSYNC_KAFKA_BOOTSTRAP": self.settings.kafka_bootstrap,
            "CONVSYNC_TOPIC_PREFIX": self.settings.topic_prefix,
            "CONVSYNC_APP_SECRET": SECRET,
            "CONVSYNC_VERIFY_TOKEN": VERIFY_TOKEN,
            "CONVSYNC_GATEWAY_PRODUCE_TIMEOUT": str(self.produce_timeout),
            "CONVSYNC_LOG_LEVEL": "DEBUG",
            "CONVSYNC_ADMIN_TOKEN": "",
            **self.extra_env,
        }
        argv = [str(Path(sys.executable).parent / "convsync"), "gateway", "--port", str(self.port)]
        argv += ["--workers", str(self.workers), "--admin-port", str(self.admin_port)]
        with self.log_file.open("ab") as out:
            # Its own session: cleanup() can kill the gateway and any workers it spawned.
            self.proc = subprocess.Popen(
                argv, cwd=REPO, env=env, stdout=out, stderr=out, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log_file.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:  # noqa: S310
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        raise TimeoutError(f"gateway not ready: {self.log_file.read_text()[-2000:]}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM and wait; return the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise
        return int(self.proc.returncode)

    def cleanup(self) -> None:
        """SIGKILL whatever is left of the gateway's process group (test teardown)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def json_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys and indexes) into a JSON value, the empty path first."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out.extend(json_paths(v, (*prefix, k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.extend(json_paths(v, (*prefix, i)))
    return out


def reshape(
    draw: st.DrawFn,
    body: dict[str, Any],
    values: st.SearchStrategy[Any],
    keys: st.SearchStrategy[str],
) -> dict[str, Any]:
    """A copy of ``body`` with 1-3 nested values replaced by ``values``, removed, or added."""
    body = copy.deepcopy(body)
    for _ in range(draw(st.integers(1, 3))):
        paths = json_paths(body)[1:]
        if not paths:  # everything was removed
            break
        path = draw(st.sampled_from(paths))
        parent = body
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        target = parent[path[-1]]
        if action == "add" and isinstance(target, dict):
            target[draw(keys)] = draw(values)
        elif action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(values)
    return body


def json_values(keys: list[str], *, max_leaves: int) -> st.SearchStrategy[Any]:
    """Random JSON values whose object keys are often ``keys`` (ints up to 70 bits)."""
    leaf = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=10),
    )
    return st.recursive(
        leaf,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from(keys) | st.text(max_size=5), inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )
