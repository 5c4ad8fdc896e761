"""Settings read from ``CONVSYNC_*`` environment variables (entry points only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import quote

import psycopg
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from convsync.errors import ConfigError

DEFAULT_GRAPH_URL = "https://graph.facebook.com/v21.0"

#: librdkafka properties whose values are secrets (besides any ``*.password`` and
#: ``*.secret``): kept out of every log line.
KAFKA_SECRET_KEYS: Final = frozenset({"ssl.key.pem", "sasl.oauthbearer.config"})


def is_secret_kafka_key(key: str) -> bool:
    """Return True if the librdkafka property ``key`` holds a secret."""
    return key in KAFKA_SECRET_KEYS or key.endswith((".password", ".secret"))


def _parse_page_tokens(value: Any) -> dict[str, SecretStr]:
    """Accept a dict, a JSON object string, or a path to a JSON object file."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        raw: Any = value
    elif isinstance(value, str):
        text = value.strip()
        if not text.startswith("{"):
            path = Path(text).expanduser()
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as e:
                raise ConfigError(f"CONVSYNC_PAGE_TOKENS: cannot read file {path}: {e}") from e
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"CONVSYNC_PAGE_TOKENS is not a JSON object: {e.msg}") from e
    else:
        raise ConfigError("CONVSYNC_PAGE_TOKENS must be a JSON object page_id -> token")
    if not isinstance(raw, dict):
        raise ConfigError("CONVSYNC_PAGE_TOKENS must be a JSON object page_id -> token")
    out: dict[str, SecretStr] = {}
    for page_id, token in raw.items():
        secret = token.get_secret_value() if isinstance(token, SecretStr) else token
        if not isinstance(secret, str) or not secret:
            raise ConfigError(f"CONVSYNC_PAGE_TOKENS: token for page {page_id} is not a string")
        out[str(page_id)] = SecretStr(secret)
    return out


def _parse_kafka_extra(value: Any) -> dict[str, SecretStr]:
    """Accept a dict or a JSON object string of librdkafka properties."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ConfigError(f"CONVSYNC_KAFKA_EXTRA is not a JSON object: {e.msg}") from e
    if not isinstance(value, dict):
        raise ConfigError("CONVSYNC_KAFKA_EXTRA must be a JSON object")
    return {str(k): SecretStr(_property_text(v)) for k, v in value.items()}


def _property_text(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Settings(BaseSettings):
    """Everything convsync needs to reach Kafka, Postgres and Meta.

    Library code receives this object (or pieces of it) as arguments; only the CLI
    builds it from the environment.
    """

    model_config = SettingsConfigDict(env_prefix="CONVSYNC_", frozen=True, extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:9092"
    database_url: SecretStr = SecretStr("postgresql://convsync@127.0.0.1:55432/convsync")
    topic_prefix: str = Field(default="convsync", pattern=r"^[A-Za-z0-9._-]{1,100}$")
    partitions: int = Field(default=12, ge=1, le=1000)
    db_schema: str = Field(default="convsync", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    app_secret: SecretStr = SecretStr("")
    verify_token: SecretStr = SecretStr("")
    graph_url: str = DEFAULT_GRAPH_URL
    page_tokens: Annotated[dict[str, SecretStr], NoDecode] = Field(default_factory=dict)
    admin_token: SecretStr = SecretStr("")
    # The old inbox's webhook endpoint during a move (issue 25): when set, the gateway
    # keeps every verified body on <prefix>.relay and `convsync relay` forwards it. A
    # secret: such URLs often carry a token.
    relay_url: SecretStr = SecretStr("")
    # Fernet keys, comma-separated (the first encrypts, all decrypt): page tokens at rest.
    secret_key: SecretStr = SecretStr("")
    # Extra librdkafka properties (SASL/SSL for a managed cluster), a JSON object. Every
    # value is kept as a secret: some are passwords (see is_secret_kafka_key).
    kafka_extra: Annotated[dict[str, SecretStr], NoDecode] = Field(default_factory=dict)
    state_dir: Path = Path(".convsync")

    @field_validator("page_tokens", mode="before")
    @classmethod
    def _page_tokens(cls, value: Any) -> dict[str, SecretStr]:
        return _parse_page_tokens(value)

    @field_validator("kafka_extra", mode="before")
    @classmethod
    def _kafka_extra(cls, value: Any) -> dict[str, SecretStr]:
        return _parse_kafka_extra(value)

    def topic(self, name: str) -> str:
        """Return the full topic name ``<prefix>.<name>``."""
        return f"{self.topic_prefix}.{name}"

    def kafka_extra_values(self) -> dict[str, str]:
        """Return ``kafka_extra`` in the clear (secrets included: never log it)."""
        # Plain strings too: model_copy(update=...) does not run the validator.
        return {k: _property_text(v) for k, v in self.kafka_extra.items()}

    def kafka_config(self) -> dict[str, str | int | float | bool]:
        """Return the base librdkafka configuration shared by every client."""
        return {"bootstrap.servers": self.kafka_bootstrap, **self.kafka_extra_values()}

    def secret_values(self) -> list[str]:
        """Return every secret value of these settings, for the log redaction filter.

        The app secret and tokens, the database password (as given and URL-encoded),
        and the secret librdkafka properties of ``kafka_extra``.
        """
        values = [
            self.app_secret,
            self.verify_token,
            self.admin_token,
            self.relay_url,
            self.secret_key,
        ]
        out = [v.get_secret_value() for v in (*values, *self.page_tokens.values())]
        try:
            password = psycopg.conninfo.conninfo_to_dict(self.database_url.get_secret_value())
        except psycopg.ProgrammingError:
            password = {}
        db_password = str(password.get("password") or "")
        out += [db_password, quote(db_password, safe="")]
        out += [v for k, v in self.kafka_extra_values().items() if is_secret_kafka_key(k)]
        return [v for v in dict.fromkeys(out) if v]
