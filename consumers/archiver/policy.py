"""Which attachment URLs may be fetched: http(s), allowed hosts, public addresses only.

An attachment URL comes from a webhook body or a Graph response: data from outside.
Fetched as given, it would make the archiver request any address its host can reach
(cloud metadata, the admin API, Postgres over HTTP...): server-side request forgery.
:class:`UrlPolicy` accepts a URL only when its scheme is http(s), it has no userinfo, its
host matches an allowed pattern and its port the pattern's port (80/443 without one), and
an IP literal is public (or loopback, when a test allows loopback). The same check runs on
every redirect target, and :class:`PublicResolver` drops non-public addresses a host name
resolves to, so an allowed name pointing inside (DNS rebinding, a bad pattern) still
reaches nothing.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from consumers.archiver.exceptions import RefusedAddressError, RefusedUrlError
from convsync.errors import ConfigError

MAX_URL_LENGTH: Final = 4096
DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# Printable ASCII without backslash: what CDN URLs are made of, and nothing two URL
# parsers could read differently (no spaces, controls, backslashes, non-ASCII).
_URL_TEXT: Final = re.compile(r"[\x21-\x5b\x5d-\x7e]+")
_LABEL: Final = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_HOST: Final = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*")


@dataclass(frozen=True, slots=True)
class HostPattern:
    """``name``, ``*.suffix`` (subdomains only) or either with ``:port``."""

    host: str
    port: int | None

    @classmethod
    def parse(cls, text: str) -> HostPattern:
        """Return the pattern of ``text``; raise ConfigError when it is not one."""
        text = text.strip().lower()
        host, port = text, None
        if text.startswith("["):
            end = text.find("]")
            host, rest = text[1:end], text[end + 1 :]
            if rest:
                port = _port(rest.removeprefix(":"), text)
        elif text.count(":") == 1:
            host, raw = text.split(":")
            port = _port(raw, text)
        if _ip(host) is None and not _HOST.fullmatch(host):
            raise ConfigError(f"CONVSYNC_MEDIA_HOSTS: not a host pattern: {text!r}")
        return cls(host, port)

    def matches(self, host: str, port: int, default_port: int) -> bool:
        """Return whether ``host:port`` is allowed by this pattern."""
        if self.port is None and port != default_port:
            return False
        if self.port is not None and port != self.port:
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        return host == self.host


def _port(raw: str, text: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"CONVSYNC_MEDIA_HOSTS: bad port in {text!r}")
    return int(raw)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def address_allowed(
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_loopback: bool
) -> bool:
    """Return whether the archiver may connect to ``addr``.

    Only globally routable addresses (not private, loopback, link-local, shared, reserved,
    multicast or unspecified; IPv4-mapped IPv6 judged as its IPv4), plus loopback when
    ``allow_loopback``.
    """
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_loopback:
        return allow_loopback
    return addr.is_global and not addr.is_multicast


class UrlPolicy:
    """The allow-list of hosts and the address rule, applied before every request."""

    def __init__(self, hosts: Iterable[str], *, allow_loopback: bool = False) -> None:
        self.patterns = tuple(HostPattern.parse(h) for h in hosts)
        if not self.patterns:
            raise ConfigError("CONVSYNC_MEDIA_HOSTS is empty: no URL could be fetched")
        self.allow_loopback = allow_loopback

    def check(self, raw: str) -> URL:
        """Return ``raw`` parsed, the exact URL to request.

        Raises :class:`RefusedUrlError` with reason ``bad_url`` (too long, not plain
        ASCII, unparseable, userinfo, fragment-only tricks), ``scheme_not_allowed``,
        ``host_not_allowed`` or ``address_not_allowed`` (a non-public IP literal).
        """
        if len(raw) > MAX_URL_LENGTH or not _URL_TEXT.fullmatch(raw):
            raise RefusedUrlError("bad_url", "URL too long or not plain printable ASCII")
        try:
            url = URL(raw, encoded=True)
        except (ValueError, TypeError) as e:
            raise RefusedUrlError("bad_url", f"unparseable URL: {e}") from e
        scheme = url.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise RefusedUrlError("scheme_not_allowed", f"scheme {scheme!r} is not http(s)")
        if url.raw_user is not None or url.raw_password is not None or "@" in url.raw_authority:
            raise RefusedUrlError("bad_url", "URL carries userinfo")
        host = (url.raw_host or "").lower().rstrip(".").strip("[]")
        if not host:
            raise RefusedUrlError("bad_url", "URL has no host")
        try:
            port = url.port or DEFAULT_PORTS[scheme]
        except ValueError as e:
            raise RefusedUrlError("bad_url", f"bad port: {e}") from e
        if not any(p.matches(host, port, DEFAULT_PORTS[scheme]) for p in self.patterns):
            raise RefusedUrlError("host_not_allowed", f"host {host}:{port} is not allowed")
        addr = _ip(host)
        if addr is not None and not address_allowed(addr, allow_loopback=self.allow_loopback):
            raise RefusedUrlError("address_not_allowed", f"address {host} is not public")
        return url


class PublicResolver(AbstractResolver):
    """aiohttp's resolver, keeping only addresses :func:`address_allowed` accepts.

    Raises :class:`RefusedAddressError` when none is left, so the connection is never
    attempted.
    """

    def __init__(self, *, allow_loopback: bool) -> None:
        self._inner = DefaultResolver()
        self.allow_loopback = allow_loopback

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Return the allowed addresses of ``host``."""
        found = await self._inner.resolve(host, port, family)
        kept = []
        for r in found:
            addr = _ip(r["host"].split("%", 1)[0])
            if addr is not None and address_allowed(addr, allow_loopback=self.allow_loopback):
                kept.append(r)
        if not kept:
            raise RefusedAddressError(f"{host} resolves to no public address")
        return kept

    async def close(self) -> None:
        """Release the inner resolver."""
        await self._inner.close()
