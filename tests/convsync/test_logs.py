"""Redaction covers the whole line written: messages, tracebacks, exception chains."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from convsync.logs import setup_logging

SECRET = "s3cr3t-page-token-9f2c"


@pytest.fixture
def logged(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    yield capsys
    logging.getLogger().handlers.clear()


def fail_with_secret() -> None:
    raise RuntimeError(f"Graph refused https://graph.example/me?access_token={SECRET}x&a=1")


def chain() -> None:
    try:
        raise ValueError(f"token {SECRET} is not valid")
    except ValueError as e:
        try:
            raise KeyError("no page") from e
        except KeyError as k:
            raise RuntimeError("crawl failed") from k


@pytest.mark.parametrize("json_format", [False, True])
def test_a_secret_inside_an_exception_message_is_redacted(
    logged: pytest.CaptureFixture[str], json_format: bool
) -> None:
    setup_logging("INFO", secrets=[SECRET], json_format=json_format)
    try:
        fail_with_secret()
    except RuntimeError:
        logging.getLogger("convsync.test").exception("step failed")
    err = logged.readouterr().err
    assert "step failed" in err and "RuntimeError" in err
    assert SECRET not in err
    assert "access_token=***" in err
    if json_format:
        assert "access_token=***" in json.loads(err.strip().splitlines()[-1])["exc"]


@pytest.mark.parametrize("json_format", [False, True])
def test_a_secret_inside_an_exception_chain_is_redacted(
    logged: pytest.CaptureFixture[str], json_format: bool
) -> None:
    setup_logging("INFO", secrets=[SECRET], json_format=json_format)
    try:
        chain()
    except RuntimeError:
        logging.getLogger("convsync.test").exception("crawl of %s failed", "p1")
    err = logged.readouterr().err
    assert "direct cause" in err and "ValueError" in err  # the whole chain is printed
    assert SECRET not in err
    assert "token *** is not valid" in err
