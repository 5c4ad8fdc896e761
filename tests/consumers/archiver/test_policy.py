"""Which URLs the archiver may fetch: schemes, host patterns, ports, IP literals."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from consumers.archiver.exceptions import RefusedAddressError, RefusedUrlError
from consumers.archiver.policy import PublicResolver, UrlPolicy, address_allowed
from consumers.archiver.settings import META_CDN_HOSTS, ArchiverSettings
from convsync.errors import ConfigError

CDN = UrlPolicy(META_CDN_HOSTS)


@pytest.mark.parametrize(
    "url",
    [
        "https://scontent.xx.fbcdn.net/v/t1.15752-9/123_n.jpg?stp=dst-jpg&_nc_cat=1&oh=00_AbC&oe=6A0",
        "https://scontent-cdg4-1.xx.fbcdn.net/v/t39/a.mp4",
        "https://video.xx.fbcdn.net/v/t42/file.mp4?x=%2F",
        "https://scontent.cdninstagram.com/v/t51/x.jpg",
        "https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id=1&signature=Ab",
        "https://LOOKASIDE.FBSBX.COM./x",
        "http://scontent.xx.fbcdn.net:80/x",
    ],
)
def test_meta_cdn_urls_are_allowed(url: str) -> None:
    assert CDN.check(url)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://fbcdn.net/x", "host_not_allowed"),  # *. is for subdomains
        ("https://evilfbcdn.net/x", "host_not_allowed"),
        ("https://scontent.fbcdn.net.evil.com/x", "host_not_allowed"),
        ("https://lookaside.fbsbx.com.evil.com/x", "host_not_allowed"),
        ("https://x.lookaside.fbsbx.com/x", "host_not_allowed"),
        ("https://scontent.xx.fbcdn.net:8443/x", "host_not_allowed"),  # other port
        ("https://user:pw@scontent.xx.fbcdn.net/x", "bad_url"),
        ("https://scontent.xx.fbcdn.net@evil.com/x", "bad_url"),
        ("https://evil.com\\@scontent.xx.fbcdn.net/x", "bad_url"),
        ("https://scontent.xx.fbcdn.net/a b", "bad_url"),
        ("https://scontent.xx.fbcdn.net/\u00e9", "bad_url"),
        ("https://scontent.xx.fbcdn.net/" + "a" * 5000, "bad_url"),
        ("ftp://scontent.xx.fbcdn.net/x", "scheme_not_allowed"),
        ("file:///etc/passwd", "scheme_not_allowed"),
        ("gopher://scontent.xx.fbcdn.net/x", "scheme_not_allowed"),
        ("//scontent.xx.fbcdn.net/x", "scheme_not_allowed"),
        ("https:///x", "bad_url"),
        ("http://169.254.169.254/latest/meta-data/", "host_not_allowed"),
    ],
)
def test_other_urls_are_refused(url: str, reason: str) -> None:
    with pytest.raises(RefusedUrlError) as e:
        CDN.check(url)
    assert e.value.reason == reason


@pytest.mark.parametrize(
    ("host", "loopback", "ok"),
    [
        ("127.0.0.1", False, False),
        ("127.0.0.1", True, True),
        ("::1", True, True),
        ("::ffff:127.0.0.1", False, False),
        ("::ffff:127.0.0.1", True, True),
        ("10.1.2.3", True, False),
        ("172.16.0.1", True, False),
        ("192.168.1.1", True, False),
        ("169.254.169.254", True, False),
        ("100.64.0.1", True, False),  # carrier-grade NAT
        ("0.0.0.0", True, False),  # noqa: S104 - an address judged, not bound
        ("224.0.0.1", True, False),
        ("fe80::1", True, False),
        ("fc00::1", True, False),
        ("::ffff:10.0.0.1", True, False),
        ("157.240.1.1", False, True),  # a Meta address
        ("2a03:2880::1", False, True),
    ],
)
def test_addresses(host: str, loopback: bool, ok: bool) -> None:
    assert address_allowed(ipaddress.ip_address(host), allow_loopback=loopback) is ok


def test_ip_literal_hosts_must_be_listed_and_public() -> None:
    policy = UrlPolicy(["10.0.0.5", "127.0.0.1:8080", "[::1]:8081"], allow_loopback=False)
    with pytest.raises(RefusedUrlError) as e:
        policy.check("http://10.0.0.5/x")
    assert e.value.reason == "address_not_allowed"
    with pytest.raises(RefusedUrlError) as e:
        policy.check("http://127.0.0.1:8080/x")
    assert e.value.reason == "address_not_allowed"
    assert UrlPolicy(["127.0.0.1:8080"], allow_loopback=True).check("http://127.0.0.1:8080/x")
    assert UrlPolicy(["[::1]:8081"], allow_loopback=True).check("http://[::1]:8081/x")


def test_host_settings() -> None:
    settings = ArchiverSettings(hosts="a.example.com, *.cdn.example.net ,127.0.0.1:9000")
    assert settings.hosts == ("a.example.com", "*.cdn.example.net", "127.0.0.1:9000")
    assert ArchiverSettings().hosts == META_CDN_HOSTS
    for bad in (["exa mple.com"], ["a.com:99999"], ["*.*.com"], ["http://a.com"], []):
        with pytest.raises(ConfigError):
            UrlPolicy(bad)


def test_the_resolver_drops_inside_addresses() -> None:
    async def resolve(host: str, loopback: bool) -> list[str]:
        resolver = PublicResolver(allow_loopback=loopback)
        try:
            return [r["host"] for r in await resolver.resolve(host, 80)]
        finally:
            await resolver.close()

    with pytest.raises(RefusedAddressError):
        asyncio.run(resolve("localhost", False))
    assert "127.0.0.1" in asyncio.run(resolve("localhost", True))
