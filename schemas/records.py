"""Records other than the envelope that travel on convsync topics."""

from __future__ import annotations

import base64
from typing import Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

DLQ_SCHEMA_VERSION: Final = 1


class DeadLetter(BaseModel):
    """A record that could not be processed, on ``<prefix>.dlq``, with why and where."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = DLQ_SCHEMA_VERSION
    reason: str = Field(description="Why the record is poison, for a human.")
    error_type: str = Field(description="The class name of the error.")
    component: str = Field(description="Which component rejected it (materializer, ...).")
    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    key_b64: str | None = Field(description="The original key bytes, base64.")
    value_b64: str | None = Field(description="The original value bytes, base64.")
    failed_at: int = Field(ge=0, description="ms since the epoch")

    @staticmethod
    def encode_bytes(data: bytes | None) -> str | None:
        """Return ``data`` as base64 text, keeping ``None``."""
        return None if data is None else base64.b64encode(data).decode("ascii")

    def original_value(self) -> bytes | None:
        """Return the original record value bytes."""
        return None if self.value_b64 is None else base64.b64decode(self.value_b64)

    def to_bytes(self) -> bytes:
        """Return the JSON bytes published as the Kafka record value."""
        return orjson.dumps(self.model_dump(mode="json"))
