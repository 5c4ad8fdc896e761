"""The closed vocabularies shared by every record: event kinds, directions, sources."""

from __future__ import annotations

from typing import Final, Literal, get_args

EventKind = Literal[
    "message",
    "delivery",
    "read",
    "reaction",
    "edit",
    "postback",
    "referral",
    "handover",
    "optin",
    "unknown",
]
Direction = Literal["inbound", "outbound"]
# import: a message loaded from another inbox's history (`convsync import`).
Source = Literal["webhook", "crawler", "import"]

EVENT_KINDS: Final[tuple[EventKind, ...]] = get_args(EventKind)
