"""Crawl requests and their continuation steps: the records on ``<prefix>.crawl``."""

from __future__ import annotations

from typing import Final, Literal, Self

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from convsync.errors import PoisonError
from schemas.kinds import Platform

CRAWL_SCHEMA_VERSION: Final = 1


class ConversationTodo(BaseModel):
    """A listed conversation whose messages are still to be read."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    thread_id: str = Field(min_length=1, description="Graph conversation id (t_...).")
    psid: str = Field(min_length=1, description="The participant that is not the page.")
    updated_at: int = Field(ge=0, description="Its updated_time, ms since the epoch.")
    message_count: int = Field(default=0, ge=0)


class CrawlCounters(BaseModel):
    """What a crawl has done so far; every step carries the running totals."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    conversations_listed: int = Field(default=0, ge=0)
    conversations_done: int = Field(default=0, ge=0)
    messages_expected: int = Field(default=0, ge=0, description="Sum of listed message_count.")
    messages: int = Field(default=0, ge=0, description="Message events produced.")
    messages_without_details: int = Field(default=0, ge=0)
    api_calls: int = Field(default=0, ge=0)
    retries: int = Field(default=0, ge=0)
    throttle_waits: int = Field(default=0, ge=0)
    throttle_seconds: float = Field(default=0.0, ge=0)
    skipped: dict[str, int] = Field(default_factory=dict, description="reason -> count")


class CrawlStep(BaseModel):
    """Where a running crawl stands: the cursor and what is left to read.

    ``conversations_url`` is the next conversations page (``None`` before the first one);
    ``queue`` holds the conversations of the last listed page not finished yet, the
    first being read at ``messages_url`` (``None``: its first page). URLs never carry an
    access token.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    conversations_url: str | None = None
    conversations_exhausted: bool = False
    queue: tuple[ConversationTodo, ...] = ()
    messages_url: str | None = None
    counters: CrawlCounters = Field(default_factory=CrawlCounters)
    started_at: int = Field(ge=0, description="ms since the epoch")


class CrawlRequest(BaseModel):
    """One record on ``<prefix>.crawl`` (key = page id): a request or a continuation.

    ``seq`` 0 with no ``step`` is a request; each step produces ``seq + 1``. A worker
    treats a record whose ``seq`` it has already handled for that crawl as a duplicate.

    An Instagram crawl names the Instagram professional account as ``page_id`` (the id
    its webhooks carry as ``entry.id``: the key, the events' page id and the crawl's
    state are the account's) with ``platform`` ``instagram`` and ``via_page``, the
    Facebook Page linked to it: Graph lists the account's conversations at
    ``/{via_page}/conversations?platform=instagram``, with that page's token.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = CRAWL_SCHEMA_VERSION
    crawl_id: str = Field(pattern=r"^[0-9a-f]{12}$")
    page_id: str = Field(min_length=1, max_length=64)
    platform: Platform = "messenger"
    via_page: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Instagram: the linked Facebook Page (its token, its conversations edge).",
    )
    full: bool = Field(default=False, description="Ignore the last completed crawl.")
    requested_at: int = Field(ge=0, description="ms since the epoch")
    since: int | None = Field(
        default=None, ge=0, description="Incremental: skip what is older than this (ms)."
    )
    seq: int = Field(default=0, ge=0)
    step: CrawlStep | None = None

    @model_validator(mode="after")
    def _linked_page(self) -> Self:
        """An Instagram crawl names its linked page; a Messenger crawl names none."""
        if self.platform == "instagram" and self.via_page is None:
            raise ValueError("an instagram crawl needs via_page, the linked Facebook Page")
        if self.platform == "messenger" and self.via_page is not None:
            raise ValueError("via_page is for instagram crawls only")
        if self.via_page == self.page_id:
            raise ValueError("via_page is the Facebook Page, not the Instagram account")
        return self

    @property
    def graph_page(self) -> str:
        """Return the Facebook Page the crawl's Graph calls go through: its token, its
        pace and its ``conversations`` edge (the linked page of an Instagram account)."""
        return self.via_page or self.page_id

    def to_bytes(self) -> bytes:
        """Return the JSON bytes published as the Kafka record value.

        A Messenger record leaves out ``platform`` and ``via_page``: it stays what
        workers from before Instagram crawls read (they refuse unknown fields).
        """
        data = self.model_dump(mode="json")
        if self.platform == "messenger":
            del data["platform"], data["via_page"]
        return orjson.dumps(data)

    @classmethod
    def from_bytes(cls, value: bytes | None) -> CrawlRequest:
        """Decode a Kafka record value. Raises :class:`PoisonError` on bad bytes."""
        if value is None:
            raise PoisonError("crawl record has no value")
        try:
            return cls.model_validate_json(value)
        except ValidationError as e:
            raise PoisonError(f"not a valid crawl record ({e.error_count()} errors)") from e
