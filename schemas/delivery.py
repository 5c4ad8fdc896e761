"""The delivery: one verified webhook entry as Meta sent it, on ``<prefix>.deliveries``.

The gateway verifies a POST's signature, checks the body's shape, and publishes each
``entry[]`` element as one delivery, keyed by its page id (``entry.id``), before it
answers 200. The mapper (``convsync mapper``) turns each delivery into envelopes on
``<prefix>.events``. A delivery carries what the mapping needs besides the entry: the
body's ``object`` (``page`` or ``instagram``: the platform) and when the gateway received
it. The entry is kept as JSON (``msgspec.Raw``: encoded once by the gateway, decoded
only by the mapper), so a fixed mapper replays the deliveries and gets the facts Meta sent.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

from convsync.errors import PoisonError

DELIVERY_VERSION: Final = 1


class Delivery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """One entry of a verified webhook body.

    ``entry`` is the entry's JSON (its values exactly as the body had them; the bytes
    are orjson's encoding of them, not the body's own escapes, which only the signature
    needed). ``received_at`` is the gateway's clock in ms when the body was read.
    """

    v: Literal[1] = DELIVERY_VERSION
    object: Literal["page", "instagram"]
    received_at: Annotated[int, msgspec.Meta(ge=0)]
    entry: msgspec.Raw


class BadDeliveryError(PoisonError):
    """A record of the deliveries topic that is not a delivery (never mapped)."""


_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(Delivery)


def encode_delivery(obj: Literal["page", "instagram"], received_at: int, entry: bytes) -> bytes:
    """Return the record value of a delivery of ``entry`` (already JSON bytes)."""
    return _ENCODER.encode(Delivery(object=obj, received_at=received_at, entry=msgspec.Raw(entry)))


def decode_delivery(value: bytes) -> Delivery:
    """Return the delivery of a record value. Raises :class:`BadDeliveryError`."""
    try:
        return _DECODER.decode(value)
    except msgspec.DecodeError as e:
        raise BadDeliveryError(f"not a delivery: {e}") from e
    except UnicodeDecodeError as e:
        # msgspec raises this one, not a DecodeError, for a string that is not UTF-8.
        raise BadDeliveryError(f"not a delivery: a string is not UTF-8 ({e.reason})") from e
