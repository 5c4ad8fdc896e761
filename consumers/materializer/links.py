"""Guests' user_refs linked to the PSIDs Meta revealed: what a batch adds to ``user_refs``.

A plugin guest is the conversation ``user_ref:<ref>`` until an item names the same person
by a PSID and the ref together; the mapping keeps the ref in ``attrs.user_ref`` and
:func:`consumers.materializer.rows.stage_row` in the row's ``user_ref`` column. The links
are a set: any order of the events that reveal them gives the same rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from consumers.materializer.rows import STAGE_COLUMNS, StageRow

Link = tuple[str, str, str]  # (page id, user_ref, psid)
_COL: Final = {name: i for i, name in enumerate(STAGE_COLUMNS)}
_PAGE, _PSID, _REF = _COL["page_id"], _COL["psid"], _COL["user_ref"]
_OCCURRED, _EVENT_ID = _COL["occurred_ms"], _COL["event_id"]


def guest_links(rows: Iterable[StageRow]) -> dict[Link, tuple[int, str]]:
    """Return each link of ``rows`` with the earliest (time in ms, event id) revealing it."""
    links: dict[Link, tuple[int, str]] = {}
    for row in rows:
        ref = row[_REF]
        if ref is None:
            continue
        link = (row[_PAGE], ref, row[_PSID])
        seen = (row[_OCCURRED], row[_EVENT_ID])
        if link not in links or seen < links[link]:
            links[link] = seen
    return links


def link_params(links: Mapping[Link, tuple[int, str]]) -> tuple[list[object], ...]:
    """The ``UPSERT_USER_REFS`` parameters: one array per column (times in ms), in link
    order."""
    ordered = sorted(links.items())
    return (
        [page for (page, _, _), _ in ordered],
        [ref for (_, ref, _), _ in ordered],
        [psid for (_, _, psid), _ in ordered],
        [ms for _, (ms, _) in ordered],
        [event_id for _, (_, event_id) in ordered],
    )
