"""Opaque cursors: a cursor is good only for the list, filters and key that made it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from admin.cursors import CURSOR_PATTERN, CursorError, Cursors

KEY = ((int, type(None)), (str,))
keys = st.tuples(
    st.one_of(st.none(), st.integers(-(2**62), 2**62)),
    st.text(min_size=1, max_size=64),
)
scopes = st.text(min_size=1, max_size=200)


@given(scope=scopes, key=keys)
def test_a_cursor_gives_back_its_key(scope: str, key: tuple[int | None, str]) -> None:
    cursors = Cursors("token-a")
    text = cursors.encode(scope, key)
    assert cursors.decode(scope, text, KEY) == key


@given(scope=scopes, key=keys, data=st.data())
def test_any_edited_character_is_refused(
    scope: str, key: tuple[int | None, str], data: st.DataObject
) -> None:
    cursors = Cursors("token-a")
    text = cursors.encode(scope, key)
    i = data.draw(st.integers(0, len(text) - 1))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    c = data.draw(st.sampled_from([a for a in alphabet if a != text[i]]))
    edited = text[:i] + c + text[i + 1 :]
    with pytest.raises(CursorError):
        cursors.decode(scope, edited, KEY)


def test_a_cursor_of_another_list_or_filter_is_refused() -> None:
    cursors = Cursors("token-a")
    text = cursors.encode("conversations\x1fp1\x1fTrue\x1f\x1f", (1, "u1"))
    for other in ("conversations\x1fp2\x1fTrue\x1f\x1f", "conversations\x1fp1\x1fNone\x1f\x1f"):
        with pytest.raises(CursorError, match="does not belong"):
            cursors.decode(other, text, KEY)


def test_a_cursor_made_with_another_token_is_refused() -> None:
    text = Cursors("token-a").encode("s", (1, "u1"))
    with pytest.raises(CursorError, match="admin token changed"):
        Cursors("token-b").decode("s", text, KEY)


@pytest.mark.parametrize(
    "text",
    ["", "1~u1", "n~u1", "abc", "abc.def", "a" * 401 + "." + "A" * 22, "abc." + "A" * 22 + "\n"],
)
def test_malformed_cursors_are_refused(text: str) -> None:
    with pytest.raises(CursorError, match="not one this API gave"):
        Cursors("token-a").decode("s", text, KEY)


def test_a_signed_payload_of_the_wrong_shape_is_refused() -> None:
    # Only a holder of the key can sign one; the shape check still stands behind the MAC.
    cursors = Cursors("token-a")
    for key in ((1, 2), ("x", "u1"), (1,), (1, "u1", 3), (True, "u1")):
        text = cursors.encode("s", key)
        with pytest.raises(CursorError):
            cursors.decode("s", text, KEY)


def test_the_cursor_text_matches_the_documented_pattern() -> None:
    import re

    text = Cursors("token-a").encode("s", (1_796_083_200_000_000, "u" * 64))
    assert re.fullmatch(CURSOR_PATTERN, text)
    assert "u" * 8 not in text  # opaque: the psid is not there to read or edit
