"""The folded message ids of a conversation: 8-byte digests, inline then in sealed chunks.

A message adds one to ``message_count``, so the change stream must know, exactly and for
the whole history, which message ids a conversation has folded (any order, any copies:
the crawler backfills history, so no window works, see docs/streams.md). Each id is kept
as an 8-byte digest (the first 64 bits of the id's sha256 hex).

Where they live, so that no record grows with the history:

* the newest ones *inline* in the conversation's record: a sorted blob of at most
  ``CHUNK - 1`` digests;
* when the inline blob reaches ``CHUNK`` digests it is *sealed*: written once, as it is,
  under the key ``["page:psid", n]`` of the digests table (n = 0, 1, 2...), never
  rewritten, and the record only counts the sealed chunks. A chunk is written and
  acknowledged before any record that counts it, so a crash between the two leaves a
  chunk that no record reads (the replay seals the same digests again).

Finding a digest among a conversation's sealed chunks is a look-up in a
:class:`DigestIndex` built from them in memory (sorted 64-bit arrays split by leading
bits: ~9 bytes per digest, a C-level binary search per look-up), rebuilt from the chunks
after a restart or an eviction.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, insort
from collections.abc import Iterable
from itertools import pairwise
from typing import Final

_ID_PREFIX_LEN: Final = len("ev1_")
DIGEST: Final = 8  # bytes of an event id kept per folded message
CHUNK: Final = 256  # digests per sealed chunk; the inline blob holds fewer
_PART: Final = 1024  # mean digests per part of an index before it splits them


def digest(event_id: str) -> bytes:
    """Return the 8-byte digest of an event id (its first 16 hex digits after "ev1_")."""
    return bytes.fromhex(event_id[_ID_PREFIX_LEN : _ID_PREFIX_LEN + 2 * DIGEST])


class _Digests:
    """A read-only sequence view of a sorted digest blob, for :func:`bisect_left`."""

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __len__(self) -> int:
        return len(self.blob) // DIGEST

    def __getitem__(self, i: int) -> bytes:
        return self.blob[i * DIGEST : (i + 1) * DIGEST]


def insert(blob: bytes, key: bytes) -> bytes | None:
    """Return ``blob`` with ``key`` inserted in order, or ``None`` if it is already there."""
    i = bisect_left(_Digests(blob), key)
    at = i * DIGEST
    if blob[at : at + DIGEST] == key:
        return None
    return blob[:at] + key + blob[at:]


def contains(blob: bytes, key: bytes) -> bool:
    """Return whether the sorted blob holds ``key``."""
    i = bisect_left(_Digests(blob), key)
    return blob[i * DIGEST : (i + 1) * DIGEST] == key


def _ints(blob: bytes) -> Iterable[int]:
    return (int.from_bytes(blob[i : i + DIGEST], "big") for i in range(0, len(blob), DIGEST))


class DigestIndex:
    """In-memory membership of the digests of a conversation's first ``chunks`` chunks.

    Sorted ``array('Q')`` parts selected by the digests' leading bits; the number of
    parts doubles when they hold more than ``_PART`` digests on average (each part splits
    in two at one binary search), so adding a digest costs amortized O(1) plus one
    ``insort`` into a part of ~1,000 (a C memmove), and a look-up one binary search.
    """

    __slots__ = ("bits", "chunks", "parts", "size")

    def __init__(self) -> None:
        self.bits = 0
        self.parts: list[array[int]] = [array("Q")]
        self.chunks = 0
        self.size = 0

    @classmethod
    def build(cls, chunks: Iterable[bytes]) -> DigestIndex:
        """Return the index of ``chunks`` (the conversation's sealed chunks, in order)."""
        index = cls()
        values: list[int] = []
        for blob in chunks:
            values.extend(_ints(blob))
            index.chunks += 1
        values.sort()
        index.size = len(values)
        while index.size > _PART * (1 << index.bits):
            index.bits += 1
        whole = array("Q", values)
        shift = 64 - index.bits
        bounds = [bisect_left(whole, p << shift) for p in range(1 << index.bits)]
        bounds.append(len(whole))
        index.parts = [whole[a:b] for a, b in pairwise(bounds)]
        return index

    def _part(self, value: int) -> array[int]:
        return self.parts[value >> (64 - self.bits)]

    def __contains__(self, key: bytes) -> bool:
        value = int.from_bytes(key, "big")
        part = self._part(value)
        i = bisect_left(part, value)
        return i < len(part) and part[i] == value

    def add(self, blob: bytes) -> None:
        """Add the next sealed chunk."""
        for value in _ints(blob):
            insort(self._part(value), value)
        self.chunks += 1
        self.size += len(blob) // DIGEST
        if self.size > _PART * len(self.parts):
            self._split()

    def _split(self) -> None:
        # Part p holds the values whose leading `bits` bits are p; its two halves are
        # those whose next bit is 0 and 1. Order is kept: parts stay sorted.
        shift = 64 - self.bits - 1
        parts: list[array[int]] = []
        for p, part in enumerate(self.parts):
            mid = bisect_left(part, ((p << 1) | 1) << shift)
            parts += [part[:mid], part[mid:]]
        self.parts = parts
        self.bits += 1

    def memory(self) -> int:
        """Return the bytes held by the parts' buffers (for benchmarks)."""
        return sum(part.buffer_info()[1] * part.itemsize for part in self.parts)
