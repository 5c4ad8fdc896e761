"""Settings parsing: page tokens, extra Kafka properties, secrets never printed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from convsync.errors import ConfigError
from convsync.logs import Redactor
from convsync.settings import Settings


def test_page_tokens_from_json_and_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONVSYNC_PAGE_TOKENS", '{"123": "tok-a"}')
    assert Settings().page_tokens["123"].get_secret_value() == "tok-a"
    f = tmp_path / "tokens.json"
    f.write_text(json.dumps({"9": "tok-b"}))
    monkeypatch.setenv("CONVSYNC_PAGE_TOKENS", str(f))
    assert Settings().page_tokens["9"].get_secret_value() == "tok-b"


@pytest.mark.parametrize("value", ["[1,2]", "{not json", '{"1": 5}', "/no/such/file"])
def test_bad_page_tokens_are_a_clear_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CONVSYNC_PAGE_TOKENS", value)
    with pytest.raises((ConfigError, ValueError), match="PAGE_TOKENS"):
        Settings()


def test_kafka_extra_passes_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVSYNC_KAFKA_EXTRA", '{"security.protocol": "SASL_SSL"}')
    monkeypatch.setenv("CONVSYNC_KAFKA_BOOTSTRAP", "b:9092")
    conf = Settings().kafka_config()
    assert conf == {"bootstrap.servers": "b:9092", "security.protocol": "SASL_SSL"}


def test_secrets_are_not_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVSYNC_APP_SECRET", "s3cr3t-app")
    monkeypatch.setenv("CONVSYNC_PAGE_TOKENS", '{"1": "page-token-xyz"}')
    text = repr(Settings()) + str(Settings().model_dump())
    assert "s3cr3t-app" not in text
    assert "page-token-xyz" not in text


def test_redactor() -> None:
    f = Redactor(["s3cr3t-app"])
    rec = logging.LogRecord(
        "x",
        logging.INFO,
        __file__,
        1,
        "secret %s sig sha256=%s url ?access_token=%s&x=1",
        ("s3cr3t-app", "ab" * 32, "EAAB123"),
        None,
    )
    line = f.redact(rec.getMessage())
    assert "s3cr3t-app" not in line
    assert "ab" * 32 not in line
    assert "EAAB123" not in line
    assert "x=1" in line


def test_json_log_lines_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    from convsync.logs import setup_logging

    setup_logging("INFO", secrets=["s3cr3t-app"], json_format=True)
    try:
        logging.getLogger("convsync.test").info("secret is %s", "s3cr3t-app")
        line = capsys.readouterr().err.strip().splitlines()[-1]
    finally:
        logging.getLogger().handlers.clear()
    record = json.loads(line)
    assert record["logger"] == "convsync.test"
    assert record["message"] == "secret is ***"


def test_kafka_extra_secrets_stay_out_of_repr_and_dumps(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = {"security.protocol": "SASL_SSL", "sasl.password": "kafka-pw-123", "x.enable": True}
    monkeypatch.setenv("CONVSYNC_KAFKA_EXTRA", json.dumps(extra))
    settings = Settings()
    text = repr(settings) + str(settings.model_dump()) + settings.model_dump_json()
    assert "kafka-pw-123" not in text
    assert settings.kafka_config()["sasl.password"] == "kafka-pw-123"
    assert settings.kafka_config()["x.enable"] == "true"  # librdkafka's spelling


def test_secret_values_hold_every_secret_and_nothing_else() -> None:
    settings = Settings(
        app_secret="app-secret-1",
        database_url="postgresql://convsync:db%2Fpw-2@127.0.0.1:1/convsync",
        kafka_extra={
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "PLAIN",
            "sasl.username": "someone",
            "sasl.password": "kafka-pw-3",
            "ssl.key.password": "key-pw-4",
            "sasl.oauthbearer.client.secret": "oauth-5",
            "ssl.key.pem": "pem-6",
        },
    )
    secrets = settings.secret_values()
    for value in ("app-secret-1", "db/pw-2", "db%2Fpw-2", "kafka-pw-3", "key-pw-4", "oauth-5"):
        assert value in secrets
    assert "pem-6" in secrets
    for value in ("SASL_SSL", "PLAIN", "someone", "convsync", ""):
        assert value not in secrets
