"""Dashboard sessions and logins over HTTP: expiry, Secure, the login limit, body deadline."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest
import requests
from pydantic import SecretStr

from admin import AdminSettings
from convsync.http import Deadlines
from convsync.settings import Settings
from tests.admin.conftest import TOKEN, ServerThread
from tests.fixtures.kafka import MakeTopics
from tests.fixtures.postgres import MakeSchema
from tests.producers.webhook.helpers import with_secrets

pytestmark = pytest.mark.integration

Serve = Callable[..., ServerThread]


@pytest.fixture
def serve(make_topics: MakeTopics, make_schema: MakeSchema) -> Iterator[Serve]:
    """Return a factory of private listeners on a fresh schema, stopped at teardown."""
    base = with_secrets(make_topics()).model_copy(update={"admin_token": SecretStr(TOKEN)})
    settings: Settings = make_schema(base=base)
    made: list[ServerThread] = []

    def factory(**admin: object) -> ServerThread:
        deadlines = admin.pop("deadlines", None)
        server = ServerThread(settings, AdminSettings(**admin), deadlines)  # type: ignore[arg-type]
        made.append(server)
        return server

    yield factory
    for server in made:
        server.stop()


def login(server: ServerThread, token: str, **headers: str) -> requests.Response:
    return requests.post(
        server.url + "/admin/login",
        data={"token": token},
        headers=headers,
        allow_redirects=False,
        timeout=30,
    )


def test_a_session_stops_working_when_it_expires(serve: Serve) -> None:
    server = serve(session_seconds=2)
    r = login(server, TOKEN)
    assert r.status_code == 303
    assert "Max-Age=2" in r.headers["Set-Cookie"]
    cookie = {"convsync_admin": r.cookies["convsync_admin"]}
    page = server.url + "/admin/dashboard"
    assert requests.get(page, cookies=cookie, timeout=30).status_code == 200
    time.sleep(2.5)
    # The browser would have dropped it; a client that keeps it is refused all the same.
    assert requests.get(page, cookies=cookie, timeout=30).status_code == 403
    # The old value, a fixed function of the token, is no session either.
    old = "convsync-dashboard-session"
    assert requests.get(page, cookies={"convsync_admin": old}, timeout=30).status_code == 403


def test_the_cookie_is_secure_unless_posted_from_a_plain_localhost_page(
    serve: Serve,
) -> None:
    server = serve()
    local = login(server, TOKEN, Origin=server.url)
    assert "Secure" not in local.headers["Set-Cookie"]
    # The page came through a TLS proxy, or the client does not say: Secure.
    for origin in ("https://admin.example.com", None):
        headers = {"Origin": origin} if origin else {}
        assert "Secure" in login(server, TOKEN, **headers).headers["Set-Cookie"], origin


def test_logins_are_limited_per_client_address(serve: Serve) -> None:
    server = serve(login_burst=3, login_per_minute=2)
    assert [login(server, "wrong").status_code for _ in range(3)] == [403, 403, 403]
    r = login(server, TOKEN)  # the right token, too late: the limit comes first
    assert r.status_code == 429
    assert r.json() == {"error": "too many login attempts, retry later"}
    assert 1 <= int(r.headers["Retry-After"]) <= 30
    # The API itself (bearer token) is not limited.
    headers = {"Authorization": f"Bearer {TOKEN}"}
    ok = requests.get(server.url + "/admin/openapi.yaml", headers=headers, timeout=30)
    assert ok.status_code == 200


def test_a_slow_body_gets_408_and_the_connection_closes(serve: Serve) -> None:
    server = serve(deadlines=Deadlines(keepalive=30, headers=10, body=1.0))
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(30)
        began = time.monotonic()
        sock.sendall(
            b"POST /admin/login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 500\r\n\r\n"
            b"token="
        )
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
            if not got.startswith(b"HTTP/1.1 408"):
                sock.sendall(b"a")  # one more byte, slowly
        seconds = time.monotonic() - began
    assert got.startswith(b"HTTP/1.1 408 Request Timeout"), got[:80]
    assert b"request body not received in time" in got
    assert 0.9 <= seconds <= 3.0, seconds
