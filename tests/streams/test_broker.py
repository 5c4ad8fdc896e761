"""CONVSYNC_KAFKA_EXTRA reaches the faust app: translated for aiokafka, or refused by name."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.types.auth import AuthProtocol, SASLMechanism

from convsync.errors import ConfigError
from convsync.settings import Settings
from streams.app import StreamConfig, make_app
from streams.broker import broker_credentials, broker_urls

PASSWORD = "pw-never-in-a-message"


def settings(**extra: Any) -> Settings:
    return Settings(kafka_bootstrap="a:9092, b:9093", kafka_extra=extra)


def sasl(**more: str) -> Settings:
    return settings(
        **{
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "u",
            "sasl.password": PASSWORD,
            **more,
        }
    )


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate (openssl), used as a CA file."""
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(folder / "key.pem"),
            "-out",
            str(folder / "cert.pem"),
            "-days",
            "2",
            "-subj",
            "/CN=convsync-test",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return folder / "cert.pem"


def test_plaintext_needs_no_credentials() -> None:
    assert broker_credentials(settings()) is None
    assert broker_urls(settings()) == ["kafka://a:9092", "kafka://b:9093"]


def test_scram_over_plaintext_becomes_sasl_credentials() -> None:
    creds = broker_credentials(sasl())
    assert isinstance(creds, faust.SASLCredentials)
    auth = credentials_to_aiokafka_auth(creds)
    assert auth == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "u",
        "sasl_plain_password": PASSWORD,
        "ssl_context": None,
    }
    assert PASSWORD not in repr(creds)


def test_sasl_ssl_with_a_ca_file_carries_a_verifying_context(ca_file: Path) -> None:
    extra = {
        "security.protocol": "sasl_ssl",
        "sasl.mechanisms": "PLAIN",  # librdkafka's other spelling
        "sasl.username": "u",
        "sasl.password": PASSWORD,
        "ssl.ca.location": str(ca_file),
    }
    creds = broker_credentials(settings(**extra))
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol is AuthProtocol.SASL_SSL
    assert creds.mechanism is SASLMechanism.PLAIN
    assert creds.ssl_context is not None
    assert creds.ssl_context.verify_mode is ssl.CERT_REQUIRED
    assert creds.ssl_context.check_hostname
    assert creds.ssl_context.get_ca_certs()


def test_ssl_alone_and_verification_switched_off(ca_file: Path) -> None:
    creds = broker_credentials(
        settings(
            **{
                "security.protocol": "SSL",
                "ssl.ca.location": str(ca_file),
                "ssl.endpoint.identification.algorithm": "none",
                "enable.ssl.certificate.verification": "false",
            }
        )
    )
    assert isinstance(creds, faust.SSLCredentials)
    assert creds.context.verify_mode is ssl.CERT_NONE
    assert not creds.context.check_hostname


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"sasl.mechanism": "OAUTHBEARER"}, "OAUTHBEARER"),
        ({"sasl.mechanism": ""}, "sasl.mechanism"),
        ({"sasl.oauthbearer.client.secret": PASSWORD}, "sasl.oauthbearer.client.secret"),
        ({"ssl.keystore.location": "/k.p12"}, "ssl.keystore.location"),
        ({"socket.nagle.disable": "true"}, "socket.nagle.disable"),
    ],
)
def test_what_cannot_be_translated_is_refused_by_name(extra: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named) as info:
        broker_credentials(sasl(**extra))
    assert PASSWORD not in str(info.value)


def test_two_different_mechanisms_are_refused() -> None:
    with pytest.raises(ConfigError, match="differ"):
        broker_credentials(sasl(**{"sasl.mechanisms": "PLAIN"}))


def test_the_default_mechanism_gssapi_is_refused() -> None:
    bare = {"security.protocol": "SASL_PLAINTEXT", "sasl.username": "u", "sasl.password": "p"}
    with pytest.raises(ConfigError, match="GSSAPI"):
        broker_credentials(settings(**bare))


def test_sasl_properties_without_a_sasl_protocol_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"SASL security\.protocol"):
        broker_credentials(settings(**{"sasl.username": "u", "sasl.password": PASSWORD}))


def test_librdkafka_tuning_is_left_to_librdkafka() -> None:
    creds = broker_credentials(sasl(**{"client.id": "x", "message.timeout.ms": "3000"}))
    assert isinstance(creds, faust.SASLCredentials)


def test_a_tls_file_that_cannot_be_read_is_a_clear_error(tmp_path: Path) -> None:
    extra = {"security.protocol": "SSL", "ssl.ca.location": str(tmp_path / "missing.pem")}
    with pytest.raises(ConfigError, match="cannot set up TLS"):
        broker_credentials(settings(**extra))


def test_the_app_uses_the_credentials_for_every_client(tmp_path: Path) -> None:
    app = make_app(sasl(), StreamConfig(data_dir=tmp_path))
    creds = app.conf.broker_credentials
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.mechanism is SASLMechanism.SCRAM_SHA_512
    assert creds.password == PASSWORD
