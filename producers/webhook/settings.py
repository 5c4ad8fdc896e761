"""The gateway's own settings: listen address, body limit, produce timeout, HTTP deadlines."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from convsync.http import Deadlines
from convsync.kafka import LARGE_RECORD_BYTES

MIB = 1024 * 1024


class GatewaySettings(BaseSettings):
    """How the webhook gateway listens and how long it waits for Kafka.

    Read from ``CONVSYNC_GATEWAY_*``; the app secret and the verify token are in
    :class:`convsync.settings.Settings` (``CONVSYNC_APP_SECRET``, ``CONVSYNC_VERIFY_TOKEN``).
    """

    model_config = SettingsConfigDict(env_prefix="CONVSYNC_GATEWAY_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    produce_timeout: float = Field(
        default=5.0, gt=0, description="Seconds to wait for Kafka to confirm a request's events."
    )
    max_body_bytes: int = Field(default=MIB, ge=1024)
    # The largest delivery (or relay) record: the max.message.bytes its topics are created
    # with (convsync.kafka.LARGE_RECORD_BYTES), above the body limit, so that a body of
    # one entry at the body limit is accepted. The producer allows it too.
    max_record_bytes: int = Field(default=LARGE_RECORD_BYTES, ge=1024)
    # 0: a request waits for its own acks, so lingering only delays the 200. librdkafka
    # still batches what queues while a produce request is in flight. Measured in
    # docs/gateway.md: 2 ms -> 0 took wrk's closed loop from ~7,200 to ~8,700 req/s.
    linger_ms: float = Field(default=0.0, ge=0, description="Producer linger (batching) in ms.")
    # Both listeners of the gateway process (webhook and admin) keep these deadlines.
    keepalive_timeout: float = Field(
        default=75.0, gt=0, description="Seconds an idle keep-alive connection stays open."
    )
    header_timeout: float = Field(
        default=10.0, gt=0, description="Seconds a request's headers may take to arrive."
    )
    body_timeout: float = Field(
        default=30.0, gt=0, description="Seconds a request's body may take to arrive."
    )

    def deadlines(self) -> Deadlines:
        """Return the HTTP deadlines of both listeners."""
        return Deadlines(
            keepalive=self.keepalive_timeout, headers=self.header_timeout, body=self.body_timeout
        )
