"""The crawler's own settings (env prefix ``CONVSYNC_CRAWL_``), durations in seconds."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CrawlerSettings(BaseSettings):
    """How fast and how persistently the crawler talks to the Graph API."""

    model_config = SettingsConfigDict(env_prefix="CONVSYNC_CRAWL_", frozen=True, extra="ignore")

    # Meta publishes about 2 calls/s per page for the Messenger conversations API.
    calls_per_second: float = Field(default=2.0, gt=0)
    # Usage (percent of the quota, from the usage headers) above which a page slows down.
    slow_down_at: float = Field(default=75.0, gt=0, lt=100)
    conversations_limit: int = Field(default=25, ge=1, le=100)
    messages_limit: int = Field(default=100, ge=1, le=100)
    max_attempts: int = Field(default=6, ge=1, description="Tries of a transient failure.")
    backoff_base: float = Field(default=0.5, gt=0)
    backoff_max: float = Field(default=30.0, gt=0)
    # A conversation whose reading used up the retries in this many crawls in a row is
    # skipped (and counted) by the next crawl resuming the page (resume.py).
    conversation_failures: int = Field(default=2, ge=1)
    max_throttle_waits: int = Field(default=1000, ge=1, description="Per step, then fail.")
    request_timeout: float = Field(default=30.0, gt=0)
    # Incremental crawls re-read conversations updated this long before the last
    # completed crawl, so clock skew and late updates are not missed.
    incremental_margin: float = Field(default=3600.0, ge=0)
    # How old the cached page tokens may be (a token set through the API or the CLI is
    # used, and a paused crawl resumed, within this many seconds).
    token_refresh: float = Field(default=5.0, gt=0, le=300)
    group: str = Field(default="convsync-crawler", min_length=1)
    # Static group membership: a restarted worker with the same id gets its partitions
    # back at once instead of after the dead member's session times out.
    instance_id: str | None = None
    session_timeout: float = Field(default=10.0, ge=6.0)
    # Running crawls' progress (crawl_state, crawl_history) is written this often, for
    # all the worker's pages in one transaction (_progress.py); a crawl's start, end,
    # failure, pause and skips at once. 0: every step's at once.
    progress_interval: float = Field(default=0.5, ge=0)
    # How often a worker reads which of its running crawls were cancelled, for all of
    # them in one query (_cancels.py): a cancel stops a crawl within this plus one step.
    # 0: read before every step.
    cancel_check_interval: float = Field(default=0.5, ge=0)
    max_pages_in_flight: int = Field(default=64, ge=1)
    # Postgres connections of one worker (a pool; progress writes are small and brief).
    db_connections: int = Field(default=2, ge=1)
    # On SIGTERM, steps in flight get this long to finish (else they are abandoned and
    # run again by the next owner); each shutdown wait (poll thread, consumer close,
    # producer flush) is bounded by close_timeout.
    stop_grace: float = Field(default=2.0, ge=0)
    close_timeout: float = Field(default=3.0, gt=0)
    # The app-wide limit (X-App-Usage, shared by every page and worker; app_usage.py):
    # above app_slow_down_at every worker spaces its calls, the more the nearer the usage
    # is to app_hold_at; at or above it one probe call goes out per app_probe_every.
    app_slow_down_at: float = Field(default=75.0, gt=0, le=100)
    app_hold_at: float = Field(default=95.0, gt=0, le=100)
    app_gap_scale: float = Field(default=0.02, gt=0, description="Seconds; see app_usage.py.")
    app_probe_every: float = Field(default=2.0, gt=0)
    # How often a worker publishes its freshest X-App-Usage to Postgres and reads the
    # freshest any worker published.
    app_usage_sync: float = Field(default=0.25, gt=0)
