"""Which URLs may receive a page token: the Graph origin and version path, nothing else."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from convsync.errors import ConfigError, PoisonError
from producers.crawler.exceptions import ForeignUrlError
from producers.crawler.urls import GRAPH_ID, SECRET_PARAMS, GraphOrigin, strip_secrets

GRAPH = GraphOrigin("https://graph.facebook.com/v21.0")
OK = "https://graph.facebook.com/v21.0/123/conversations"


@pytest.mark.parametrize(
    "url",
    [
        OK,
        f"{OK}?platform=messenger&fields=id,updated_time&limit=25&after=QVFIUmFh%3D%3D",
        "HTTPS://Graph.Facebook.COM/v21.0/123/conversations",  # scheme and host ignore case
        "https://graph.facebook.com:443/v21.0/123/conversations",  # the default port, named
        f"{OK}?access_token=x&appsecret_proof=y",  # stripped before the call, not refused
    ],
)
def test_the_graph_origin_is_accepted(url: str) -> None:
    assert GRAPH.refusal(url) is None
    assert GRAPH.refusal(url, node="123", edge="conversations") is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        # another host, scheme, port or version
        ("https://evil.example/v21.0/123/conversations", "host"),
        ("https://graph.facebook.com.evil.example/v21.0/123/conversations", "host"),
        ("https://graph.facebook.com./v21.0/123/conversations", "host"),  # trailing dot
        ("https://graph.facebook.co/v21.0/123/conversations", "host"),
        ("https://169.254.169.254/v21.0/123/conversations", "host"),  # cloud metadata
        ("https://[::1]/v21.0/123/conversations", "host"),
        ("https://[::ffff:a9fe:a9fe]/v21.0/123/conversations", "host"),
        ("http://graph.facebook.com/v21.0/123/conversations", "scheme"),
        ("ftp://graph.facebook.com/v21.0/123/conversations", "scheme"),
        ("https://graph.facebook.com:8443/v21.0/123/conversations", "port"),
        ("https://graph.facebook.com:80/v21.0/123/conversations", "port"),
        ("https://graph.facebook.com:99999/v21.0/123/conversations", "port"),
        ("https://graph.facebook.com/v2.0/123/conversations", "not under /v21.0"),
        ("https://graph.facebook.com/v21.01/123/conversations", "not under /v21.0"),
        ("https://graph.facebook.com/V21.0/123/conversations", "not under /v21.0"),
        ("https://graph.facebook.com/123/conversations", "not under /v21.0"),
        # user info and other authority tricks
        ("https://graph.facebook.com@evil.example/v21.0/123/conversations", "scheme://host"),
        ("https://user:pw@graph.facebook.com/v21.0/123/conversations", "scheme://host"),
        ("https://graph.facebook.com:443@evil.example/v21.0/123/conversations", "scheme://host"),
        ("https://graph.facebook.com%2F@evil.example/v21.0/1/conversations", "scheme://host"),
        ("https://graph.facebook.com%40evil.example/v21.0/1/conversations", "scheme://host"),
        ("https://graph.facebook.com\\@evil.example/v21.0/1/conversations", "scheme://host"),
        ("https://evil.example\\graph.facebook.com/v21.0/1/conversations", "scheme://host"),
        ("https:\\\\evil.example/v21.0/123/conversations", "scheme://host"),
        ("//evil.example/v21.0/123/conversations", "scheme://host"),
        ("///evil.example/v21.0/123/conversations", "scheme://host"),
        ("https:/evil.example/v21.0/123/conversations", "scheme://host"),
        ("https:evil.example/v21.0/123/conversations", "scheme://host"),
        ("/v21.0/123/conversations", "scheme://host"),
        ("https:///v21.0/123/conversations", "scheme://host"),
        ("", "scheme://host"),
        # escaping the version path
        ("https://graph.facebook.com/v21.0/../v2.0/123/conversations", "segment"),
        ("https://graph.facebook.com/v21.0/./123/conversations", "segment"),
        ("https://graph.facebook.com/v21.0//123/conversations", "segment"),
        ("https://graph.facebook.com/v21.0/123/conversations/", "segment"),
        ("https://graph.facebook.com/v21.0/%2e%2e/%2e%2e/123/conversations", "percent"),
        ("https://graph.facebook.com/v21.0/%2E%2E/123/conversations", "percent"),
        ("https://graph.facebook.com/v21.0/123%2fconversations", "percent"),
        ("https://graph.facebook.com/v21.0/1/c;x=../../evil", "segment"),
        # characters no URL of ours holds: spaces, CR/LF (header injection), non-ASCII
        (f" {OK}", "spaces"),
        (f"{OK} ", "spaces"),
        (f"{OK}\r\nHost: evil.example", "spaces"),
        (f"{OK}?after=a\tb", "spaces"),
        ("https://graph.faceb\u03bfok.com/v21.0/123/conversations", "non-ASCII"),  # omicron
        ("https://graph.facebook.com\u3002/v21.0/123/conversations", "non-ASCII"),
        # a fragment, a method override, absurd length
        (f"{OK}#frag", "fragment"),
        (f"{OK}?method=delete", "method"),
        (f"{OK}?after=x&METHOD=post", "method"),
        (f"{OK}?%6Dethod=post", "method"),
        (f"{OK}?after={'a' * 9000}", "longer than"),
    ],
)
def test_anything_else_is_refused_with_its_reason(url: str, why: str) -> None:
    reason = GRAPH.refusal(url)
    assert reason is not None and why in reason, reason
    with pytest.raises(ForeignUrlError) as info:
        GRAPH.check(url)
    assert isinstance(info.value, PoisonError)
    assert "https://graph.facebook.com/v21.0/..." in str(info.value)


@pytest.mark.parametrize("value", [None, 5, b"https://graph.facebook.com/v21.0/1/x", ["u"]])
def test_a_url_that_is_not_text_is_refused(value: object) -> None:
    assert "not text" in (GRAPH.refusal(value) or "")


@pytest.mark.parametrize(
    ("url", "node", "edge"),
    [
        (OK, "999", "conversations"),  # another page's listing
        (OK, "123", "messages"),  # another edge
        ("https://graph.facebook.com/v21.0/123/conversations/x", "123", "conversations"),
        ("https://graph.facebook.com/v21.0/123/feed", "123", "conversations"),
        ("https://graph.facebook.com/v21.0/me/conversations", "123", "conversations"),
    ],
)
def test_a_step_fetches_only_its_own_node_and_edge(url: str, node: str, edge: str) -> None:
    assert GRAPH.refusal(url) is None
    reason = GRAPH.refusal(url, node=node, edge=edge)
    assert reason is not None and f"/v21.0/'{node}'/{edge}" in reason, reason


def test_a_local_base_with_a_port_and_an_ipv6_literal() -> None:
    local = GraphOrigin("http://127.0.0.1:8080/v21.0/")
    assert local.base == "http://127.0.0.1:8080/v21.0"
    assert local.refusal("http://127.0.0.1:8080/v21.0/1/conversations") is None
    assert "port 8081" in (local.refusal("http://127.0.0.1:8081/v21.0/1/conversations") or "")
    assert "port 80 " in (local.refusal("http://127.0.0.1/v21.0/1/conversations") or "")
    assert "host" in (local.refusal("http://localhost:8080/v21.0/1/conversations") or "")
    assert "host" in (local.refusal("http://127.0.0.2:8080/v21.0/1/conversations") or "")
    six = GraphOrigin("http://[::1]:8080/v21.0")
    assert six.refusal("http://[::1]:8080/v21.0/t_1/messages") is None
    assert "host" in (six.refusal("http://[::2]:8080/v21.0/t_1/messages") or "")
    # the same address written otherwise is not the configured text: refused
    assert "host" in (six.refusal("http://[0:0:0:0:0:0:0:1]:8080/v21.0/t_1/messages") or "")
    assert six.refusal("http://[::1]@evil:8080/v21.0/t_1/messages") is not None


@pytest.mark.parametrize(
    "base",
    [
        "graph.facebook.com/v21.0",
        "ftp://graph.facebook.com/v21.0",
        "https://user@graph.facebook.com/v21.0",
        "https://graph.facebook.com/v21.0?x=1",
        "https://graph.facebook.com/v21.0#x",
        "https://graph.facebook.com/v21.0/../v2.0",
        "https://graph.facebook.com/%76%32",
        "https://graph.facebook.com:70000/v21.0",
        "https://graph.facebook.com /v21.0",
    ],
)
def test_an_unusable_graph_url_setting_is_a_config_error(base: str) -> None:
    with pytest.raises(ConfigError, match="CONVSYNC_GRAPH_URL"):
        GraphOrigin(base)


@pytest.mark.parametrize("node", ["", ".", "..", "../x", "a/b", "a?b", "a#b", "%2e%2e", "a b", "é"])
def test_an_id_that_is_not_a_graph_id_never_becomes_a_path(node: str) -> None:
    with pytest.raises(ForeignUrlError, match="not a Graph id"):
        GRAPH.url(node, "messages", {"limit": 1})


@given(
    node=st.from_regex(GRAPH_ID, fullmatch=True),
    edge=st.sampled_from(["conversations", "messages"]),
    params=st.dictionaries(
        st.sampled_from(["fields", "limit", "after", "platform"]), st.text(max_size=30)
    ),
)
def test_every_url_the_crawler_builds_is_accepted(
    node: str, edge: str, params: dict[str, str]
) -> None:
    url = GRAPH.url(node, edge, params)
    assert GRAPH.refusal(url, node=node, edge=edge) is None
    assert URL(url, encoded=True).query == params


# Pieces that parsers are known to disagree about, glued at random around the base.
PIECES = [
    "https://graph.facebook.com/v21.0/", "https://graph.facebook.com", "https:", "//", "/",
    "\\", "@", ":", ":443", ":80", "evil.example", "graph.facebook.com", ".", "..", "%2e",
    "%2f", "%40", "?", "#", "&", "=", "v21.0", "v2.0", "1", "t_1", "conversations",
    "messages", "[::1]", "user:pw", ";", "%", "\t", " ", "\u3002", "method=delete",
]  # fmt: skip


@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=12))
def test_whatever_is_accepted_every_parser_sends_to_graph(pieces: list[str]) -> None:
    url = "".join(pieces)
    if GRAPH.refusal(url) is not None:
        return
    # urllib, yarl as aiohttp uses it (decoded and encoded): same place, same version.
    split = urlsplit(url)
    assert (split.scheme.lower(), split.hostname, split.port or 443) == (
        "https",
        "graph.facebook.com",
        443,
    )
    assert split.path.startswith("/v21.0/") and split.username is None
    for parsed in (URL(url), URL(url, encoded=True)):
        assert (parsed.scheme, parsed.host, parsed.port, parsed.user) == (
            "https",
            "graph.facebook.com",
            443,
            None,
        )
        assert parsed.path.startswith("/v21.0/")


@given(
    st.lists(
        st.tuples(
            st.sampled_from([*SECRET_PARAMS, "access%5Ftoken", "after", "limit", "fields"]),
            st.text(alphabet="abc%=", max_size=8),
        ),
        max_size=8,
    )
)
def test_stored_urls_keep_no_token_or_proof(pairs: list[tuple[str, str]]) -> None:
    query = "&".join(f"{k}={v}" for k, v in pairs)
    out = strip_secrets(f"{OK}?{query}" if query else OK)
    assert out.startswith(OK)
    kept = [p for p in out.partition("?")[2].split("&") if p]
    assert [p.split("=", 1)[0] for p in kept] == [
        k for k, _ in pairs if k not in SECRET_PARAMS and k != "access%5Ftoken"
    ]
