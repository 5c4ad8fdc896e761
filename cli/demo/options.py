"""What the demo runs against: its names, secrets and the size of the simulated world."""

from __future__ import annotations

import secrets
from collections import Counter
from dataclasses import dataclass, field

DEMO_PREFIX = "convsync-demo"
DEMO_SCHEMA = "convsync_demo"
APP_SECRET = "demo-app-secret"  # noqa: S105 - the simulator's own secret, not a credential
VERIFY_TOKEN = "demo-verify-token"  # noqa: S105
# A fresh one every run: the admin port is on 127.0.0.1, but a guessable token is refused.
ADMIN_TOKEN = secrets.token_urlsafe(32)

TruthRow = tuple[str, str, str, str | None, str | None]  # page, psid, mid, text, direction


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """How big the simulated world is and how hard the webhooks push."""

    pages: int = 3
    conversations: int = 2000
    max_messages: int = 6
    webhook_bodies: int = 600
    webhook_rate: float = 150.0
    crawler_workers: int = 2
    calls_per_second: float = 200.0
    seed: int = 7
    timeout: float = 900.0
    # Attachments of crawled messages point at a fake CDN and the archiver keeps them.
    archive: bool = True
    # After the backfill: new messages whose webhooks Meta drops (a share of them), filled
    # by the crawler's reconciliation every ``reconcile_every`` seconds, unasked.
    gap_messages: int = 30
    missed_share: float = 0.2
    reconcile_every: float = 20.0
    # Then one page's token expires and is rotated through the admin API: messages
    # written meanwhile (no webhooks) come with the paused crawl once it resumes.
    reconnect_messages: int = 5


@dataclass
class WebhookTally:
    """What the fake Meta sent and what the gateway answered."""

    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    truth: set[TruthRow] = field(default_factory=set)
    read_watermarks: dict[tuple[str, str], int] = field(default_factory=dict)
    instagram_messages: int = 0
    guests: set[tuple[str, str]] = field(default_factory=set)  # (page, user_ref key)
    done: bool = False
    error: str | None = None
