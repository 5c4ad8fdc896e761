"""The contacts of the read-path data set: who each conversation's user is.

One row per conversation, as the crawler's profile fetcher leaves them: 90 % named from
a User Profile API answer (made into a row by ``producers.crawler.contacts.from_profile``,
the fetcher's own builder), 4 % refused by Meta (no name, an error), 6 % not asked yet (no
row). Names are drawn from syllables in three scripts, so that a three-letter prefix
matches a few users of a page, as real names do, rather than a fixed list of names
shared by thousands of users.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from producers.crawler.contacts import from_profile
from tests.bench.read_path.shape import NOW_MS, Shape

COLUMNS: Final = (
    "page_id", "psid", "platform", "name", "first_name", "last_name", "username",
    "profile_pic", "source", "fetched_at", "error", "error_at", "attempts",
)  # fmt: skip
NAMED: Final = 0.90
REFUSED: Final = 0.04
_LATIN: Final = (
    "an", "be", "ca", "da", "el", "fa", "gi", "ha", "is", "jo", "ka", "lu", "ma", "ni",
    "ol", "pe", "ra", "sa", "ta", "ul", "va", "wi", "ya", "zo", "mar", "len", "son", "ric",
    "ton", "mi", "ko", "lin", "ber", "ste", "vin", "dra", "nor", "qui", "xa", "ru",
)  # fmt: skip
_CYRILLIC: Final = ("ан", "ва", "ли", "на", "ол", "ра", "се", "та", "ми", "ко", "дим", "лю")  # noqa: RUF001
_ARABIC: Final = ("سا", "مح", "عل", "فا", "نو", "ري", "لي", "حس", "كر", "يو")
_SCRIPTS: Final = ((_LATIN, 85), (_CYRILLIC, 10), (_ARABIC, 5))


def _word(rng: random.Random, syllables: tuple[str, ...]) -> str:
    word = "".join(rng.choice(syllables) for _ in range(rng.choice((2, 2, 3, 3, 4))))
    return word[:1].upper() + word[1:]


def _person(rng: random.Random) -> tuple[str, str]:
    (syllables,) = rng.choices([s for s, _ in _SCRIPTS], [w for _, w in _SCRIPTS])
    return _word(rng, syllables), _word(rng, syllables)


def contact_rows(shape: Shape) -> Iterator[tuple[Any, ...]]:
    """Yield the contacts' rows, page by page (a function of the shape's seed)."""
    now = datetime.fromtimestamp(NOW_MS / 1000, UTC)
    for page, size in enumerate(shape.page_sizes):
        rng = random.Random(f"{shape.seed}:contacts:{page}")
        page_id = shape.page_id(page)
        for index in range(size):
            psid = shape.psid(page, index)
            roll = rng.random()
            at = now - timedelta(seconds=rng.random() * 30 * 86_400)
            if roll < NAMED:
                first, last = _person(rng)
                pic = f"https://platform-lookaside.fbsbx.com/p/{psid}.jpg"
                body = {"first_name": first, "last_name": last, "profile_pic": pic}
                c = from_profile(page_id, psid, "messenger", body)
                yield (
                    c.page_id, c.psid, c.platform, c.name, c.first_name, c.last_name,
                    c.username, c.profile_pic, "profile_api", at, None, None, 0,
                )  # fmt: skip
            elif roll < NAMED + REFUSED:
                error = "(#230) Requires pages_messaging permission to manage the object"
                yield (
                    page_id, psid, "messenger", None, None, None, None, None, "profile_api",
                    None, error, at, 1 + int(rng.random() * 3),
                )  # fmt: skip
