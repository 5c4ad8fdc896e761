"""Records, JSON Schemas and SQL migrations: the contracts of convsync."""

from schemas.envelope import SCHEMA_VERSION, Envelope
from schemas.event_id import canonical_json, detail_digest, make_event_id
from schemas.kinds import EVENT_KINDS, PLATFORMS, Direction, EventKind, Platform, Source
from schemas.migrate import apply_migrations, load_migrations
from schemas.records import DeadLetter

__all__ = [
    "EVENT_KINDS",
    "PLATFORMS",
    "SCHEMA_VERSION",
    "DeadLetter",
    "Direction",
    "Envelope",
    "EventKind",
    "Platform",
    "Source",
    "apply_migrations",
    "canonical_json",
    "detail_digest",
    "load_migrations",
    "make_event_id",
]
