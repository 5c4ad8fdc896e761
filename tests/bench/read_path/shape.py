"""The shape of the read-path data set: pages, their conversations, events per conversation.

Everything is a pure function of ``(pages, conversations, events, seed)``, so a restarted
generator makes the same chunks again, and the load benchmark finds the same psids the
generator wrote without reading them back.

- Conversations per page follow a power law (weight ``rank ** -0.9``): a few brand pages
  with tens of thousands of conversations (the largest holds ~8 % of them, so at full
  scale its needs-reply list runs past page 1,000 of 50), a long tail with a few hundred.
- Events per conversation are log-normal (sigma 1.2, scaled to the requested total): most
  conversations have a handful of events, a few hundred have thousands.
- Chunk ``k`` of ``K`` holds, for every page, the conversations ``j`` with ``j % K == k``:
  every chunk spans every page and the whole history, and its events are written in time
  order, so the events of one conversation end up spread over the chunk's heap pages
  rather than side by side (as on a live table, where they arrive over months).
"""

from __future__ import annotations

import math
import random
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Final

# "Now" of the data set (2026-12-01T00:00:00Z) and how far back its history goes.
NOW_MS: Final = 1_796_083_200_000
HISTORY_MS: Final = 2 * 365 * 86_400_000
PAGE_EXPONENT: Final = 0.9
EVENTS_SIGMA: Final = 1.2
# A prime above 2**32 and a multiplier: psid = a bijection of (page, index), spread over
# 16-digit ids like Meta's.
_P: Final = 4_294_967_311
_A: Final = 2_654_435_761


@dataclass(frozen=True)
class Shape:
    """A data set: ``pages`` pages, ``conversations`` conversations, ``events`` event rows."""

    pages: int
    conversations: int
    events: int
    seed: int = 24
    chunk_events: int = 100_000

    def __post_init__(self) -> None:
        if not 1 <= self.pages <= 4096:
            raise ValueError("pages must be in [1, 4096]")
        if not self.pages <= self.conversations <= self.pages * 2**20:
            raise ValueError("every page needs a conversation, at most 2**20 each")
        if self.events < self.conversations:
            raise ValueError("every conversation needs an event")

    @property
    def chunks(self) -> int:
        """How many chunks the events are written in."""
        return max(1, math.ceil(self.events / self.chunk_events))

    def as_json(self) -> dict[str, int]:
        """What identifies the data set (stored with it, checked on restart)."""
        return {
            "pages": self.pages,
            "conversations": self.conversations,
            "events": self.events,
            "seed": self.seed,
            "chunk_events": self.chunk_events,
        }

    @staticmethod
    def page_id(page: int) -> str:
        """The id of page number ``page``."""
        return str(10**14 + 7919 * page)

    @staticmethod
    def psid(page: int, index: int) -> str:
        """The psid of conversation ``index`` of page number ``page`` (unique per page)."""
        x = ((page << 20) | index) + 1
        return str(10**15 + (x * _A % _P) * (8 * 10**15 // _P))

    @cached_property
    def page_sizes(self) -> list[int]:
        """Conversations of each page, largest first; they sum to ``conversations``."""
        weights = [(i + 1) ** -PAGE_EXPONENT for i in range(self.pages)]
        total = sum(weights)
        sizes = [max(1, int(self.conversations * w / total)) for w in weights]
        i = 0
        while (diff := self.conversations - sum(sizes)) != 0:
            step = 1 if diff > 0 else -1
            if sizes[i % self.pages] + step >= 1:
                sizes[i % self.pages] += step
            i += 1
        return sizes

    @cached_property
    def _offsets(self) -> list[int]:
        out, at = [], 0
        for size in self.page_sizes:
            out.append(at)
            at += size
        return out

    @cached_property
    def event_counts(self) -> array[int]:
        """Event rows of every conversation, page by page; they sum to ``events``."""
        rng = random.Random(self.seed)
        mu = math.log(self.events / self.conversations) - EVENTS_SIGMA**2 / 2
        raw = [rng.lognormvariate(mu, EVENTS_SIGMA) for _ in range(self.conversations)]
        scale = (self.events - self.conversations) / sum(raw)
        counts = array("l", (1 + int(r * scale) for r in raw))
        missing = self.events - sum(counts)
        for i in range(missing):
            counts[(i * 7919) % self.conversations] += 1
        return counts

    def count(self, page: int, index: int) -> int:
        """Event rows of conversation ``index`` of page number ``page``."""
        return self.event_counts[self._offsets[page] + index]

    def chunk(self, k: int) -> Iterator[tuple[int, int, int]]:
        """Yield ``(page, index, events)`` of every conversation of chunk ``k``."""
        for page, size in enumerate(self.page_sizes):
            for index in range(k, size, self.chunks):
                yield page, index, self.count(page, index)
