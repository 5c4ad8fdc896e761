"""The closed vocabularies shared by every record: event kinds, directions, sources,
platforms."""

from __future__ import annotations

from typing import Final, Literal, get_args

EventKind = Literal[
    "message",
    "delivery",
    "read",
    "reaction",
    "edit",
    "unsend",
    "postback",
    "referral",
    "handover",
    "optin",
    "unknown",
]
Direction = Literal["inbound", "outbound"]
# import: a message loaded from another inbox's history (`convsync import`).
Source = Literal["webhook", "crawler", "import"]
# Which inbox an event belongs to: a Facebook page (Messenger) or an Instagram account.
Platform = Literal["messenger", "instagram"]

EVENT_KINDS: Final[tuple[EventKind, ...]] = get_args(EventKind)
PLATFORMS: Final[tuple[Platform, ...]] = get_args(Platform)
