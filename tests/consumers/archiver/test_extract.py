"""The archiver reads an event's attachments by the same rule as the ``attachments`` view:
the Python twins of the SQL functions give the same answers for any JSON value."""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.types.json import Jsonb

from consumers.archiver.extract import (
    attachment_list,
    attachment_type,
    attachment_url,
    attachments_of,
)
from convsync.errors import PoisonError
from convsync.settings import Settings
from schemas.envelope import Envelope

KEYS = ("url", "URL", "payload", "image_data", "video_data", "file_url", "type", "title")
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8)
scalars = (
    st.none() | st.booleans() | st.integers(-5, 5) | text | st.sampled_from(["", "http://a/b"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=12,
)
# Attachments shaped like the real ones, with several URL places filled at once (so the
# order the places are tried in matters), and anything else.
urls = st.sampled_from(["", "http://a/1", "https://b/2", 5, None, [], {}])
inner = st.fixed_dictionaries({}, optional={"url": urls, "URL": urls}) | values
shaped = st.fixed_dictionaries(
    {},
    optional={
        "url": urls,
        "URL": urls,
        "payload": inner,
        "image_data": inner,
        "video_data": inner,
        "file_url": urls,
        "type": st.sampled_from(["image", "video", "", 3, None, {}]),
    },
)
items = shaped | st.dictionaries(st.sampled_from(KEYS), values, max_size=5) | values
attachments = st.lists(items, max_size=4) | items


@pytest.mark.integration
@settings(
    max_examples=300,
    deadline=None,
    # The schema is read only: one for every example is right.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(value=attachments)
def test_python_and_sql_read_attachments_alike(
    pg_settings: Settings, pg_conn: psycopg.Connection[tuple[object, ...]], value: Any
) -> None:
    query = sql.SQL(
        "SELECT {s}.attachment_url(a), {s}.attachment_type(a)"
        " FROM jsonb_array_elements({s}.attachment_list(%s)) AS a"
    ).format(s=sql.Identifier(pg_settings.db_schema))
    got = pg_conn.execute(query, (Jsonb(value),)).fetchall()
    want = [(attachment_url(a), attachment_type(a)) for a in attachment_list(value)]
    assert [tuple(r) for r in got] == want


def envelope(attrs: dict[str, Any]) -> Envelope:
    return Envelope.build(
        kind="message",
        page_id="p1",
        psid="u1",
        mid="m1",
        occurred_at=1,
        source="webhook",
        attrs=attrs,
        raw={},
    )


def test_attachments_of_a_record() -> None:
    env = envelope({"attachments": [{"type": "image", "url": "https://x/1"}, {"type": "x"}]})
    got = attachments_of(env.to_bytes())
    assert [(a.event_id, a.psid, a.idx, a.url, a.type) for a in got] == [
        (env.event_id, "u1", 0, "https://x/1", "image"),
        (env.event_id, "u1", 1, None, "x"),
    ]
    assert attachments_of(envelope({"title": "no attachments"}).to_bytes()) == []
    # "attachments" in the text, not in attrs: none.
    assert attachments_of(envelope({"note": '"attachments"'}).to_bytes()) == []
    with pytest.raises(PoisonError):
        attachments_of(b'{"attrs": {"attachments": []}')
    with pytest.raises(PoisonError):
        attachments_of(orjson.dumps({"attrs": {"attachments": [{"url": "u"}]}}))
