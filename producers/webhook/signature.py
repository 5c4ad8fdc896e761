"""Verification of Meta's ``X-Hub-Signature-256`` header (HMAC-SHA256 of the raw body)."""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Final, Literal

HEADER: Final = "X-Hub-Signature-256"
LEGACY_HEADER: Final = "X-Hub-Signature"
_FORMAT: Final = re.compile(r"sha256=([0-9a-fA-F]{64})")

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
    match = _FORMAT.fullmatch(header.strip())
    if match is None:
        return "malformed"
    given = bytes.fromhex(match.group(1))
    expected = hmac.new(secret, body, hashlib.sha256).digest()
    return "ok" if hmac.compare_digest(given, expected) else "mismatch"
