"""The admin API's own settings: its listener, sessions and logins, tags, dashboard sampling."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

TAG_PATTERN = r"^[a-z0-9][a-z0-9_:.-]{0,63}$"
TAG = re.compile(TAG_PATTERN)


class AdminSettings(BaseSettings):
    """Where the admin API and the dashboard listen and how they behave (``CONVSYNC_ADMIN_*``).

    The bearer token itself is ``CONVSYNC_ADMIN_TOKEN`` in :class:`convsync.settings.Settings`.
    """

    model_config = SettingsConfigDict(env_prefix="CONVSYNC_ADMIN_", frozen=True, extra="ignore")

    # The private listener of the gateway process: admin API, dashboard, metrics.
    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=0, le=65535)
    session_seconds: int = Field(
        default=8 * 3600, ge=1, le=30 * 86400, description="Life of a dashboard session cookie."
    )
    login_burst: int = Field(default=5, ge=1, le=1000, description="Logins at once per client.")
    login_per_minute: float = Field(
        default=5.0, gt=0, le=6000, description="Logins per minute per client after the burst."
    )
    login_clients: int = Field(
        default=4096, ge=16, le=1_000_000, description="Client addresses the login limit keeps."
    )

    # Comma-separated; cleared from a conversation when the page replies after they were set.
    auto_clear_tags: Annotated[tuple[str, ...], NoDecode] = ("needs_attention",)
    dlq_tail: int = Field(default=20, ge=0, le=500, description="DLQ entries on the dashboard.")
    sample_seconds: float = Field(default=2.0, gt=0, description="Dashboard sampling period.")
    samples: int = Field(default=150, ge=2, le=10_000, description="Ring buffer length.")

    @field_validator("auto_clear_tags", mode="before")
    @classmethod
    def _tags(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [t.strip() for t in value.split(",") if t.strip()]
        tags = tuple(str(t) for t in value)
        for tag in tags:
            if not TAG.fullmatch(tag):
                raise ValueError(f"not a valid tag: {tag!r}")
        return tags
