"""Which URLs may carry a page token: the Graph API's own origin and version path only.

A crawl record's stored cursor URL and a response's ``paging.next`` are data from outside
(anyone who can write to ``<prefix>.crawl``, or a tampered response). Fetched as given,
they would send ``Authorization: Bearer <page token>`` to any host. :class:`GraphOrigin`
accepts a URL only when its scheme, host, port and version path equal those of
``CONVSYNC_GRAPH_URL`` and its path is made of Graph ids; everything else is refused
with a reason, before any request is made.

The check reads the raw text with one strict grammar (no userinfo, no backslash, no
percent-encoding or dot segments in the path, no fragment, printable ASCII only), so
that no two URL parsers can disagree about where an accepted URL goes; yarl's reading of
it is then compared as well.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import unquote

from yarl import URL

from convsync.errors import ConfigError
from producers.crawler.exceptions import ForeignUrlError

MAX_URL_LENGTH: Final = 8192
# A Graph node id (page, thread, user) or edge name as it may appear in a URL path. The
# first character is never a dot, so "." and ".." cannot be ids; no "%", "/", "@", "?".
GRAPH_ID: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:=-]{0,255}")
# Query parameters that carry or prove a token: removed from stored URLs, added by the
# client on each call (the token itself only ever travels in the Authorization header).
SECRET_PARAMS: Final = frozenset({"access_token", "appsecret_proof", "appsecret_time"})
# Graph's HTTP method override (``?method=delete``): a GET must stay a read.
FORBIDDEN_PARAMS: Final = frozenset({"method"})
DEFAULT_PORTS: Final = {"http": 80, "https": 443}

_PRINTABLE: Final = re.compile(r"[\x21-\x7e]*")
_HEAD: Final = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)"
    r"(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<path>/[A-Za-z0-9._~!$&'()*+,;=:@/-]*)?"
)


def strip_secrets(url: str) -> str:
    """Return ``url`` without its token and proof query parameters (cursors are stored).

    Works on the raw text: the rest of the URL is kept byte for byte, so that what was
    checked is what is fetched.
    """
    head, sep, query = url.partition("?")
    if not sep:
        return url
    kept = [p for p in query.split("&") if unquote(p.split("=", 1)[0]) not in SECRET_PARAMS]
    return f"{head}?{'&'.join(kept)}" if kept else head


class GraphOrigin:
    """The one origin and version path that page tokens are sent to.

    Built from ``CONVSYNC_GRAPH_URL`` (e.g. ``https://graph.facebook.com/v21.0``).
    """

    def __init__(self, base_url: str) -> None:
        """Raises :class:`ConfigError` when ``base_url`` is not a plain http(s) base URL."""
        base = base_url.rstrip("/")
        m = _HEAD.fullmatch(base) if _PRINTABLE.fullmatch(base) else None
        if m is None or m["scheme"].lower() not in DEFAULT_PORTS:
            raise ConfigError(
                "CONVSYNC_GRAPH_URL must be an http(s) URL like https://graph.facebook.com/v21.0"
                " (no user, query, fragment or percent-encoding)"
            )
        self.scheme = m["scheme"].lower()
        self.host = m["host"].lower()
        self.port = int(m["port"]) if m["port"] else DEFAULT_PORTS[self.scheme]
        self.version_path = m["path"] or ""
        if self.port > 65535 or any(
            not GRAPH_ID.fullmatch(s) for s in self.version_path.split("/")[1:]
        ):
            raise ConfigError(f"CONVSYNC_GRAPH_URL has an unusable port or path: {base}")
        default = self.port == DEFAULT_PORTS[self.scheme]
        self.base = (
            f"{self.scheme}://{self.host}{'' if default else f':{self.port}'}{self.version_path}"
        )

    def __str__(self) -> str:
        return self.base

    def url(self, node: str, edge: str, params: Mapping[str, str | int]) -> str:
        """Return the URL of ``/{node}/{edge}`` with ``params``.

        Raises :class:`ForeignUrlError` when ``node`` or ``edge`` is not a Graph id.
        """
        for part in (node, edge):
            if not GRAPH_ID.fullmatch(part):
                raise ForeignUrlError(f"{_show(part)} is not a Graph id; not put in a URL")
        return str(URL(f"{self.base}/{node}/{edge}", encoded=True).with_query(dict(params)))

    def check(self, url: object, *, node: str | None = None, edge: str | None = None) -> str:
        """Return ``url`` when a page token may be sent to it.

        With ``node`` and ``edge`` the path must be exactly ``{version}/{node}/{edge}``;
        without, any path of Graph ids under the version path. Raises
        :class:`ForeignUrlError` with the reason otherwise.
        """
        reason = self.refusal(url, node=node, edge=edge)
        if reason is not None:
            raise ForeignUrlError(f"{reason}; only {self.base}/... may receive a page token")
        assert isinstance(url, str)
        return url

    def refusal(
        self, url: object, *, node: str | None = None, edge: str | None = None
    ) -> str | None:
        """Return why ``url`` may not receive a page token, or None when it may."""
        if not isinstance(url, str):
            return f"the URL is a {type(url).__name__}, not text"
        if len(url) > MAX_URL_LENGTH:
            return f"the URL is longer than {MAX_URL_LENGTH} characters"
        if not _PRINTABLE.fullmatch(url):
            return "the URL has spaces, control or non-ASCII characters"
        if "#" in url:
            return "the URL has a fragment"
        head, _, query = url.partition("?")
        m = _HEAD.fullmatch(head)
        if m is None:
            return (
                "the URL is not scheme://host[:port]/path (user info, backslashes and"
                " percent-encoding are refused before the query)"
            )
        scheme, host, path = m["scheme"].lower(), m["host"].lower(), m["path"] or ""
        if scheme != self.scheme:
            return f"scheme {_show(scheme)} is not {self.scheme}"
        if host != self.host:
            return f"host {_show(host)} is not {self.host}"
        port = int(m["port"]) if m["port"] else DEFAULT_PORTS.get(scheme, -1)
        if port != self.port:
            return f"port {port} is not {self.port}"
        if not path.startswith(self.version_path + "/"):
            return f"the path is not under {self.version_path or '/'}"
        segments = path[len(self.version_path) + 1 :].split("/")
        if not all(GRAPH_ID.fullmatch(s) for s in segments):
            return "the path has a segment that is not a Graph id (empty, '.', '..' or odd)"
        if node is not None and edge is not None and segments != [node, edge]:
            return f"the path is not {self.version_path}/{_show(node)}/{edge}"
        for pair in query.split("&") if query else ():
            key = unquote(pair.split("=", 1)[0]).lower()
            if key in FORBIDDEN_PARAMS:
                return f"the query sets {_show(key)}"
        # The strict reading above and yarl's (what aiohttp sends) must agree.
        try:
            parsed = URL(url, encoded=True)
            same = (
                parsed.scheme == self.scheme
                and (parsed.raw_host or "").lower() == host.strip("[]")
                and parsed.port == self.port
                and parsed.raw_path == path
                and parsed.raw_user is None
            )
        except ValueError:
            same = False
        if not same:
            return "the URL reads differently to the HTTP client"
        return None


def _show(text: str) -> str:
    """Return attacker-controlled text short and quoted, for a reason."""
    return repr(text[:80] + ("..." if len(text) > 80 else ""))
