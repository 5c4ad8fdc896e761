"""The archiver's settings (``CONVSYNC_MEDIA_*``): where files go, which hosts, what limits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from convsync.errors import ConfigError

MIB: Final = 1024 * 1024
#: Where Meta serves attachment bytes: the Facebook and Instagram CDNs and the lookaside
#: host of Messenger/Instagram attachment links. ``*.`` matches any subdomain.
META_CDN_HOSTS: Final = ("*.fbcdn.net", "*.cdninstagram.com", "lookaside.fbsbx.com")


def _host_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, list | tuple):
        items = [str(v).strip() for v in value]
    else:
        raise ConfigError("CONVSYNC_MEDIA_HOSTS must be a comma-separated list of hosts")
    return tuple(i.lower() for i in items if i)


class ArchiverSettings(BaseSettings):
    """How the media archiver stores, fetches and reports.

    Read from ``CONVSYNC_MEDIA_*`` by the command that starts the archiver; Kafka and
    Postgres come from :class:`convsync.settings.Settings`. The archiver is off unless
    ``CONVSYNC_MEDIA_DIR`` is set (or ``convsync archive`` is run).
    """

    model_config = SettingsConfigDict(env_prefix="CONVSYNC_MEDIA_", frozen=True, extra="ignore")

    dir: Path | None = Field(default=None, description="Folder of the content-addressed files.")
    hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        default=META_CDN_HOSTS,
        description="Hosts URLs may point at: name, *.suffix, or host:port (then only "
        "that port; without a port only 80/443).",
    )
    max_bytes: int = Field(default=64 * MIB, ge=1, description="Largest file kept.")
    timeout: float = Field(default=300.0, gt=0, description="Seconds for one whole request.")
    connect_timeout: float = Field(default=10.0, gt=0, description="Seconds to connect.")
    read_timeout: float = Field(default=20.0, gt=0, description="Seconds without a byte.")
    concurrency: int = Field(default=4, ge=1, le=64, description="Downloads at once.")
    max_attempts: int = Field(
        default=6, ge=1, le=100, description="Tries of a transient failure before giving up."
    )
    retry_base: float = Field(
        default=5.0, gt=0, description="First retry delay in seconds; doubles per try."
    )
    retry_max: float = Field(default=3600.0, gt=0, description="Longest retry delay.")
    max_redirects: int = Field(default=3, ge=0, le=10)
    allow_loopback: bool = Field(
        default=False,
        description="Let allowed hosts be loopback addresses (tests and the local demo).",
    )
    metrics_addr: str = Field(
        default="127.0.0.1:9465", description="host:port of /metrics and /healthz."
    )
    poll_interval: float = Field(default=1.0, gt=0, description="Seconds between idle polls.")

    @field_validator("dir", mode="before")
    @classmethod
    def _dir(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("hosts", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> tuple[str, ...]:
        return _host_list(value)

    def metrics_host_port(self) -> tuple[str, int]:
        """Return ``metrics_addr`` split; raise ConfigError when it is not host:port."""
        host, sep, port = self.metrics_addr.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"CONVSYNC_MEDIA_METRICS_ADDR must be host:port: {self.metrics_addr}")
        return host.strip("[]"), int(port)
