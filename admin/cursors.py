"""Opaque, tamper-evident keyset cursors of the admin API's lists.

A cursor is ``<payload>.<tag>``, both base64url without padding: the payload is the JSON
list of the last row's sort key (for example ``[last_message_at in µs, psid]``), the tag
the first 16 bytes of an HMAC-SHA256 over the list's *scope* and the payload. The scope
names the list and its filters (``conversations`` of page ``p`` with ``needs_reply``,
...), so a cursor is only good for the query that made it: an edited cursor, one made
for another page or filter, or one from before the admin token changed is refused (400)
instead of quietly answering another query. Clients treat cursors as opaque text.

The key is derived from the admin token (every gateway worker holds the same one, so a
cursor made by one worker is good at the next), with a label of its own so that it is
never the token itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from typing import Final

import orjson

# What the OpenAPI document says a cursor looks like (payload . 16-byte tag).
CURSOR_PATTERN: Final = r"^[A-Za-z0-9_-]{1,400}\.[A-Za-z0-9_-]{22}$"
_CURSOR: Final = re.compile(CURSOR_PATTERN)
_LABEL: Final = b"convsync admin cursor v1"
_TAG_BYTES: Final = 16

Key = tuple[int | str | None, ...]


class CursorError(ValueError):
    """A cursor that this server did not make for this query; the message says so."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Cursors:
    """Makes and checks cursors with one key."""

    def __init__(self, secret: str) -> None:
        self._key = hmac.new(secret.encode("utf-8"), _LABEL, hashlib.sha256).digest()

    def _tag(self, scope: str, payload: bytes) -> bytes:
        msg = scope.encode("utf-8") + b"\x00" + payload
        return hmac.new(self._key, msg, hashlib.sha256).digest()[:_TAG_BYTES]

    def encode(self, scope: str, key: Key) -> str:
        """Return the cursor of the row whose sort key is ``key``, for ``scope``."""
        payload = orjson.dumps(list(key))
        return f"{_b64(payload)}.{_b64(self._tag(scope, payload))}"

    def decode(self, scope: str, text: str, shape: tuple[tuple[type, ...], ...]) -> Key:
        """Return the sort key of ``text`` when it was made for ``scope``.

        ``shape`` holds the types each value may have (``(int, type(None))``: an integer
        or null). Raises :class:`CursorError` for anything else.
        """
        if not _CURSOR.fullmatch(text):
            raise CursorError("cursor is not one this API gave (use next_cursor as it is)")
        body = text.partition(".")[0]
        try:
            payload = _unb64(body)
        except (binascii.Error, ValueError) as e:
            raise CursorError("cursor is not one this API gave") from e
        # Compared as text: base64's last character carries spare bits, and two texts
        # that decode to the same bytes must not both pass.
        expected = _b64(payload) + "." + _b64(self._tag(scope, payload))
        if not hmac.compare_digest(text.encode("ascii"), expected.encode("ascii")):
            raise CursorError(
                "cursor does not belong to this list and filter (or the admin token changed):"
                " start again from the first page"
            )
        try:
            values = orjson.loads(payload)
        except orjson.JSONDecodeError as e:  # only a key holder could sign such a payload
            raise CursorError("cursor is not one this API gave") from e
        if not isinstance(values, list) or len(values) != len(shape):
            raise CursorError("cursor is not one this API gave")
        for value, kinds in zip(values, shape, strict=True):
            if type(value) not in kinds:
                raise CursorError("cursor is not one this API gave")
        return tuple(values)
