"""Verification of Meta's ``X-Hub-Signature-256`` header (HMAC-SHA256 of the raw body)."""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache
from typing import Any, Final, Literal

HEADER: Final = "X-Hub-Signature-256"
LEGACY_HEADER: Final = "X-Hub-Signature"
_PREFIX: Final = "sha256="
_DIGEST_SIZE: Final = 32
_LENGTH: Final = len(_PREFIX) + 2 * _DIGEST_SIZE  # sha256=<64 hex digits>

Verdict = Literal["ok", "missing", "legacy_only", "malformed", "mismatch"]


def sign(secret: bytes, body: bytes) -> str:
    """Return the header value Meta would send for ``body``: ``sha256=<hex>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str | None, *, legacy: str | None = None) -> Verdict:
    """Return ``"ok"`` when ``header`` is the HMAC-SHA256 of the exact ``body`` bytes.

    Any other verdict says why the request must be refused (403): no header (``missing``,
    or ``legacy_only`` when only the sha1 ``X-Hub-Signature`` came), not of the form
    ``sha256=<64 hex>`` (``malformed``), or a different digest (``mismatch``). The digests
    are compared in constant time.
    """
    if header is None:
        return "legacy_only" if legacy is not None else "missing"
    value = header.strip()
    if len(value) != _LENGTH or not value.startswith(_PREFIX):
        return "malformed"
    try:
        given = bytes.fromhex(value[7:])
    except ValueError:
        return "malformed"
    if len(given) != _DIGEST_SIZE:  # fromhex skips spaces: "ab cd" is two bytes
        return "malformed"
    inner, outer = _keyed(secret)
    mac = inner.copy()
    mac.update(body)
    digest = outer.copy()
    digest.update(mac.digest())
    return "ok" if hmac.compare_digest(given, digest.digest()) else "mismatch"


_BLOCK: Final = 64  # SHA-256's block size
_IPAD: Final = bytes(b ^ 0x36 for b in range(256))
_OPAD: Final = bytes(b ^ 0x5C for b in range(256))


@lru_cache(maxsize=4)
def _keyed(secret: bytes) -> tuple[Any, Any]:
    """Return HMAC-SHA256's inner and outer hashes with ``secret``'s padded key absorbed.

    RFC 2104, as ``hmac.new`` computes it, with the key's two blocks hashed once per
    secret instead of once per request: per body only the body and a 32-byte digest are
    hashed, on copies of these states. Equal to ``hmac.digest(secret, body, "sha256")``
    (``test_signature.py`` checks it on random keys, short and longer than a block).
    """
    key = hashlib.sha256(secret).digest() if len(secret) > _BLOCK else secret
    key = key.ljust(_BLOCK, b"\0")
    return hashlib.sha256(key.translate(_IPAD)), hashlib.sha256(key.translate(_OPAD))
