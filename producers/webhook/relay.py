"""`convsync relay`: every verified webhook body, forwarded to the old inbox (issue 25).

While a business moves from another inbox, Meta can call one webhook URL only: convsync's
gateway. With ``CONVSYNC_RELAY_URL`` set the gateway keeps each verified body unchanged,
with its signature headers, on ``<prefix>.relay`` (in the same confirmation as its
deliveries, so before the 200); this component forwards them, one after the other, to
the old endpoint. The forwarding never delays Meta's 200 (it happens after it, from
Kafka) and never loses a body: a record's offset is committed only once the old endpoint
answered 2xx, or once the record is copied whole to ``<prefix>.relay-dead`` after
``max_attempts`` failed attempts (with capped, jittered exponential backoff in between).
A crash retries from the last committed offset (a body may then be forwarded twice: the
old endpoint sees Meta's own retry semantics, at least once). The old endpoint checks
the signature itself: the body's bytes and the ``X-Hub-Signature-256`` header go
through byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from typing import Final

import aiohttp
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from prometheus_client import Counter, Gauge

from convsync.ends import EndsProbe
from convsync.errors import ConfigError, RetryableError
from convsync.kafka import ClientConfig, behind, check_record_error, make_consumer, make_producer
from convsync.observe import Heartbeat
from convsync.settings import Settings
from producers.webhook.signature import HEADER, LEGACY_HEADER

log = logging.getLogger(__name__)

GROUP: Final = "convsync-relay"
# Headers of a relay record forwarded as HTTP headers (the rest are convsync's own).
FORWARDED: Final = (HEADER, LEGACY_HEADER)
ATTEMPTS_HEADER: Final = "x-convsync-relay-attempts"
ERROR_HEADER: Final = "x-convsync-relay-error"

FORWARDED_TOTAL: Final = Counter("convsync_relay_forwarded", "Bodies the old endpoint took (2xx).")
ATTEMPTS: Final = Counter(
    "convsync_relay_attempts", "Forwarding attempts, by outcome.", ["outcome"]
)
DEAD: Final = Counter(
    "convsync_relay_dead", "Bodies copied to the relay's dead-letter topic after max attempts."
)
LAG: Final = Gauge(
    "convsync_relay_lag", "Bodies behind the partition's high watermark.", ["group", "partition"]
)
HEARTBEAT: Heartbeat = Heartbeat(stale_after=600.0)
# Seconds between two settings of the lag gauges (and two end-offset queries).
LAG_INTERVAL: Final = 5.0


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """Where bodies come from and go, and how hard to try."""

    kafka: ClientConfig
    topic: str
    dead_topic: str
    url: str
    group: str = GROUP
    max_attempts: int = 8
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    timeout: float = 10.0

    @classmethod
    def from_settings(
        cls, settings: Settings, *, group: str = GROUP, max_attempts: int = 8
    ) -> RelayConfig:
        """Return the config of ``settings``. Raises :class:`ConfigError` without a URL."""
        url = settings.relay_url.get_secret_value()
        if not url.startswith(("http://", "https://")):
            raise ConfigError("CONVSYNC_RELAY_URL must be set to the old endpoint's http(s) URL")
        return cls(
            kafka=settings.kafka_config(),
            topic=settings.topic("relay"),
            dead_topic=settings.topic("relay-dead"),
            url=url,
            group=group,
            max_attempts=max_attempts,
        )


@dataclass(slots=True)
class Totals:
    """What one relay did."""

    forwarded: int = 0
    retries: int = 0
    dead: int = 0


def backoff(attempt: int, *, initial: float, cap: float) -> float:
    """Return the wait after failed attempt ``attempt`` (1-based): exponential, capped,
    jittered down by up to a half."""
    return min(cap, initial * 2.0 ** min(attempt - 1, 32)) * random.uniform(0.5, 1.0)  # noqa: S311


class Relay:
    """Forwards ``<prefix>.relay`` in order; :meth:`run` until ``stop`` is set."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.totals = Totals()
        self._dead: Producer | None = None
        self._gauged: set[int] = set()  # partitions with a lag gauge set by this relay

    async def run(self, stop: asyncio.Event) -> Totals:
        """Forward records until ``stop`` is set."""
        cfg = self.config
        consumer = make_consumer(cfg.kafka, cfg.group, **{"log_level": 4})
        consumer.subscribe([cfg.topic])
        timeout = aiohttp.ClientTimeout(total=cfg.timeout)
        loop = asyncio.get_running_loop()
        next_lag = 0.0
        # The ends come from a thread of its own: a broker slow to answer never holds a body.
        probe = EndsProbe(
            cfg.kafka, cfg.group, (cfg.topic,), interval=LAG_INTERVAL, name="relay-ends"
        )
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                while not stop.is_set():
                    HEARTBEAT.beat("relaying")
                    msgs = await asyncio.to_thread(consumer.consume, 100, 0.2)
                    for msg in msgs:
                        err = msg.error()
                        if err is not None:
                            check_record_error(err)
                            continue
                        if not await self._deliver(session, msg, stop):
                            return self.totals  # stopped mid-record: not committed
                        consumer.commit(
                            offsets=[
                                TopicPartition(
                                    msg.topic() or cfg.topic,
                                    msg.partition() or 0,
                                    (msg.offset() or 0) + 1,
                                )
                            ],
                            asynchronous=False,
                        )
                    if loop.time() >= next_lag:
                        self._report_lag(consumer, probe)
                        next_lag = loop.time() + LAG_INTERVAL
        finally:
            probe.close()
            consumer.close()
            if self._dead is not None:
                self._dead.flush(10)
        return self.totals

    async def _deliver(
        self, session: aiohttp.ClientSession, msg: Message, stop: asyncio.Event
    ) -> bool:
        """Forward one record, retrying, or dead-letter it; False when stopped first."""
        cfg = self.config
        headers = {
            name: value.decode("utf-8", "surrogateescape")
            for name, value in _headers(msg)
            if name in FORWARDED
        }
        headers["Content-Type"] = "application/json"
        body = msg.value() or b""
        error = ""
        for attempt in range(1, cfg.max_attempts + 1):
            HEARTBEAT.beat("relaying")
            try:
                async with session.post(
                    cfg.url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    await response.read()
                    if 200 <= response.status < 300:
                        ATTEMPTS.labels("ok").inc()
                        FORWARDED_TOTAL.inc()
                        self.totals.forwarded += 1
                        return True
                    error = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as e:
                # Never the URL: it may carry a token.
                error = type(e).__name__
            ATTEMPTS.labels("failed").inc()
            if attempt == cfg.max_attempts:
                break
            self.totals.retries += 1
            wait = backoff(attempt, initial=cfg.backoff_initial, cap=cfg.backoff_max)
            log.info(
                "relay: %s[%s]@%s attempt %d failed (%s); again in %.1fs",
                msg.topic(),
                msg.partition(),
                msg.offset(),
                attempt,
                error,
                wait,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await stop.wait()
            if stop.is_set():
                return False
        await asyncio.to_thread(self._bury, msg, error)
        return True

    def _bury(self, msg: Message, error: str) -> None:
        """Copy ``msg`` whole to the dead topic and wait for Kafka's confirmation."""
        cfg = self.config
        if self._dead is None:
            self._dead = make_producer(cfg.kafka, **{"linger.ms": 0})
        failed: list[str] = []
        headers: list[tuple[str, str | bytes | None]] = [
            *_headers(msg),
            (ATTEMPTS_HEADER, str(cfg.max_attempts).encode()),
            (ERROR_HEADER, error.encode()),
        ]

        def done(err: object, _msg: object) -> None:
            if err is not None:
                failed.append(str(err))

        self._dead.produce(
            cfg.dead_topic, value=msg.value(), key=msg.key(), headers=headers, on_delivery=done
        )
        if self._dead.flush(30) or failed:
            raise RetryableError(f"relay dead letter not confirmed: {failed or 'timeout'}")
        DEAD.inc()
        self.totals.dead += 1
        log.warning(
            "relay: %s[%s]@%s not forwarded after %d attempts (%s); kept on %s",
            msg.topic(),
            msg.partition(),
            msg.offset(),
            cfg.max_attempts,
            error,
            cfg.dead_topic,
        )

    def _report_lag(self, consumer: Consumer, probe: EndsProbe) -> None:
        """Set the lag gauges of the assigned partitions from the ends the probe last
        learned and the consumer's own positions (no query to Kafka here)."""
        cfg = self.config
        owned = {tp.partition for tp in consumer.assignment()}
        probe.want(owned)
        for partition in self._gauged - owned:  # given away: another relay reports it
            with contextlib.suppress(KeyError):
                LAG.remove(cfg.group, str(partition))
        self._gauged &= owned
        try:
            lags = behind(consumer, cfg.topic, probe.ends(cfg.topic))
        except KafkaException as e:
            log.info("relay lag of %s unknown: %s", cfg.topic, e)
            return
        for partition, n in lags.items():
            LAG.labels(cfg.group, str(partition)).set(n)
            self._gauged.add(partition)


def _headers(msg: Message) -> list[tuple[str, bytes]]:
    out = []
    for item in msg.headers() or []:
        name, value = item[0], item[1]
        if isinstance(value, bytes):
            out.append((name, value))
    return out
