"""The admin token's rules, session cookies, the Secure rule and the login limiter."""

from __future__ import annotations

import secrets
import string

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from admin.auth import MIN_TOKEN_LENGTH, Sessions, check_token, plain_localhost
from admin.ratelimit import LoginLimiter
from convsync.errors import ConfigError

REFUSED = [
    "CHANGE-ME",
    "change-me-" * 4,
    "changeme" * 4,
    "CHANGE_ME_CHANGE_ME_CHANGE_ME_CHANGE_ME",
    "your-admin-token-here-please-0123456789",
    "secret-secret-secret-secret-secret",
    "password1234567890password1234567890",
    "admin-admin-admin-admin-admin-admin",
    "token_token_token_token_token_token",
    "x" * 64,
    "ab" * 32,
    "0123456701234567012345670123456701",  # 8 distinct characters
    "a-short-token-0123456789",  # 24 characters
    "a token with spaces in it 0123456789abcdefgh",
    "changeme" * 200 + "!",  # long: the check must not backtrack
]


@pytest.mark.parametrize("token", REFUSED)
def test_guessable_tokens_are_refused_with_a_clear_message(token: str) -> None:
    with pytest.raises(ConfigError, match="CONVSYNC_ADMIN_TOKEN") as e:
        check_token(token)
    assert "secrets.token_urlsafe(32)" in str(e.value)
    assert token not in str(e.value)


def test_empty_token_means_admin_off_and_random_tokens_pass() -> None:
    check_token("")
    for _ in range(200):
        check_token(secrets.token_urlsafe(32))
        check_token(secrets.token_hex(32))


@given(st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=0, max_size=80))
def test_a_token_passes_only_when_long_and_varied(token: str) -> None:
    try:
        check_token(token)
    except ConfigError:
        return
    assert token == "" or (len(token) >= MIN_TOKEN_LENGTH and len(set(token)) >= 10)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_session_expires_and_cannot_be_altered() -> None:
    clock = Clock()
    sessions = Sessions("t" * 40, seconds=3600, clock=clock)
    value = sessions.issue()
    assert "t" * 40 not in value
    assert sessions.valid(value)
    assert sessions.issue() != value  # every login gets its own value
    clock.now += 3599
    assert sessions.valid(value)
    clock.now += 1
    assert not sessions.valid(value)
    # A later expiry written over the old one breaks the MAC.
    expiry, nonce, mac = value.split(".")
    assert not sessions.valid(f"{int(expiry) + 10_000}.{nonce}.{mac}")
    # Another token's sessions, and junk, are refused.
    clock.now -= 10
    assert not Sessions("u" * 40, seconds=3600, clock=clock).valid(value)
    for junk in ("", "x", "..", "1.2.3", f"{expiry}..{mac}", value + "0", "9" * 40 + "." + mac):
        assert not sessions.valid(junk)


def req(**headers: str) -> object:
    return make_mocked_request("POST", "/admin/login", headers=headers)


@pytest.mark.parametrize(
    ("headers", "plain"),
    [
        ({"Origin": "http://127.0.0.1:8081"}, True),
        ({"Origin": "http://localhost:8081"}, True),
        ({"Origin": "http://[::1]:8081"}, True),
        ({"Origin": "http://127.0.0.2"}, True),
        # The page came over TLS, from another host, or the client says nothing: Secure.
        ({"Origin": "https://127.0.0.1:8081"}, False),
        ({"Origin": "https://admin.example.com", "Host": "127.0.0.1:8081"}, False),
        ({"Origin": "http://admin.example.com"}, False),
        ({"Origin": "http://127.0.0.1.example.com"}, False),
        ({"Origin": "null"}, False),
        ({"Origin": "http://[::1"}, False),
        ({"Host": "127.0.0.1:8081"}, False),
        ({}, False),
    ],
)
def test_the_cookie_is_secure_unless_plain_localhost(headers: dict[str, str], plain: bool) -> None:
    assert plain_localhost(req(**headers)) is plain  # type: ignore[arg-type]


def test_the_limiter_answers_with_the_wait_and_forgets_old_clients() -> None:
    clock = Clock(0.0)
    limiter = LoginLimiter(burst=3, per_minute=6, clients=2, clock=clock)
    assert [limiter.attempt("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.attempt("a")
    assert wait == pytest.approx(10.0)  # one attempt per 10 s after the burst
    assert LoginLimiter.retry_after(wait) == "10"
    assert LoginLimiter.retry_after(0.2) == "1"
    clock.now += 10
    assert limiter.attempt("a") == 0.0
    limiter.attempt("b")
    limiter.attempt("c")  # a third client: the least recently seen ("a") is forgotten
    assert len(limiter) == 2
    assert [limiter.attempt("a") for _ in range(3)] == [0.0, 0.0, 0.0]


@given(
    st.lists(
        st.tuples(st.integers(0, 30), st.floats(0, 20, allow_nan=False)),
        max_size=300,
    ),
    st.integers(1, 10),
)
def test_no_client_gets_more_than_its_budget_and_the_map_stays_bounded(
    steps: list[tuple[int, float]], burst: int
) -> None:
    clock = Clock(0.0)
    per_minute = 12.0
    limiter = LoginLimiter(burst=burst, per_minute=per_minute, clients=64, clock=clock)
    allowed: dict[int, list[float]] = {}
    for client, pause in steps:
        clock.now += pause
        if limiter.attempt(str(client)) == 0.0:
            allowed.setdefault(client, []).append(clock.now)
        assert len(limiter) <= 64
    # Within any window, a client got at most the burst plus what the rate refilled.
    for times in allowed.values():
        for i, start in enumerate(times):
            for j in range(i, len(times)):
                window = times[j] - start
                assert j - i + 1 <= burst + window * per_minute / 60 + 1e-9


def test_the_map_never_outgrows_its_size() -> None:
    limiter = LoginLimiter(burst=1, per_minute=1, clients=16)
    for i in range(10_000):
        limiter.attempt(f"198.51.100.{i}")
    assert len(limiter) == 16
