"""X-Hub-Signature-256 verification: exact bytes, constant-time, every refusal reason."""

from __future__ import annotations

import hashlib
import hmac
import json

from hypothesis import given
from hypothesis import strategies as st

from producers.webhook.signature import sign, verify

SECRET = b"app-secret-for-tests"


def test_valid_signature() -> None:
    body = b'{"object":"page","entry":[]}'
    assert verify(SECRET, body, sign(SECRET, body)) == "ok"


def test_uppercase_hex_is_the_same_digest() -> None:
    body = b"{}"
    header = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest().upper()
    assert verify(SECRET, body, header) == "ok"


def test_refusals() -> None:
    body = b'{"object":"page","entry":[]}'
    good = sign(SECRET, body)
    sha1 = "sha1=" + hmac.new(SECRET, body, hashlib.sha1).hexdigest()
    assert verify(SECRET, body, None) == "missing"
    assert verify(SECRET, body, None, legacy=sha1) == "legacy_only"
    assert verify(SECRET, body, sha1) == "malformed"
    assert verify(SECRET, body, good[:-1]) == "malformed"
    assert verify(SECRET, body, good + "0") == "malformed"
    assert verify(SECRET, body, "sha256=" + "z" * 64) == "malformed"
    assert verify(SECRET, body, "") == "malformed"
    assert verify(SECRET, body, "sha256=é" + "0" * 63) == "malformed"
    assert verify(SECRET, body + b" ", good) == "mismatch"
    assert verify(b"other-secret", body, good) == "mismatch"


def test_escaped_and_raw_unicode_verify_over_the_bytes_as_sent() -> None:
    value = {"text": "ça va? 👋🏽 价格 \u0000 / \\"}
    escaped = json.dumps(value, ensure_ascii=True).encode()
    raw = json.dumps(value, ensure_ascii=False).encode("utf-8")
    assert escaped != raw
    assert verify(SECRET, escaped, sign(SECRET, escaped)) == "ok"
    assert verify(SECRET, raw, sign(SECRET, raw)) == "ok"
    # Same JSON value, other bytes: a different signature.
    assert verify(SECRET, raw, sign(SECRET, escaped)) == "mismatch"


@given(body=st.binary(max_size=512), header=st.text(max_size=80))
def test_random_headers_never_raise(body: bytes, header: str) -> None:
    assert verify(SECRET, body, header) in {"malformed", "mismatch", "ok"}
    assert verify(SECRET, body, sign(SECRET, body)) == "ok"


@given(secret=st.binary(max_size=200), body=st.binary(max_size=2048))
def test_the_keyed_states_compute_hmac_sha256(secret: bytes, body: bytes) -> None:
    # Keys shorter and longer than SHA-256's 64-byte block: the latter are hashed first.
    expected = hmac.digest(secret, body, "sha256")
    assert verify(secret, body, "sha256=" + expected.hex()) == "ok"
    assert verify(secret, body, " sha256=" + expected.hex().upper() + "\n") == "ok"
    wrong = bytes([expected[0] ^ 1]) + expected[1:]
    assert verify(secret, body, "sha256=" + wrong.hex()) == "mismatch"


def test_hex_with_spaces_is_malformed_not_a_shorter_digest() -> None:
    body = b"{}"
    digest = sign(SECRET, body)[7:]
    spaced = digest[:30] + "  " + digest[32:]  # same length; fromhex skips spaces: 31 bytes
    assert verify(SECRET, body, "sha256=" + spaced) == "malformed"
