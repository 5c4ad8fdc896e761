"""How the faust app reaches Kafka: ``CONVSYNC_KAFKA_EXTRA`` translated for aiokafka.

The other components use librdkafka, which takes ``CONVSYNC_KAFKA_EXTRA`` as it is; faust
drives aiokafka, which takes credentials objects. The security properties are
translated; the few librdkafka tuning properties that do not change how a client
connects are left to librdkafka; anything else is refused with its name, so the streams
worker never connects differently from the other components.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Final

import faust
from faust.types.auth import CredentialsT

from convsync.errors import ConfigError
from convsync.settings import Settings

log = logging.getLogger(__name__)

_NAME: Final = "CONVSYNC_KAFKA_EXTRA"
#: SASL mechanisms aiokafka takes with a user name and password.
PASSWORD_MECHANISMS: Final = frozenset({"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"})
#: librdkafka properties that tune its own clients and do not change how one connects.
LIBRDKAFKA_ONLY: Final = frozenset(
    {
        "client.id",
        "debug",
        "log_level",
        "statistics.interval.ms",
        "socket.keepalive.enable",
        "message.timeout.ms",
        "queue.buffering.max.kbytes",
        "queue.buffering.max.messages",
        "queue.buffering.max.ms",
        "linger.ms",
        "batch.num.messages",
        "compression.type",
        "fetch.wait.max.ms",
        "session.timeout.ms",
        "heartbeat.interval.ms",
    }
)


def broker_urls(settings: Settings) -> list[str]:
    """Return faust's broker URLs. The scheme stays ``kafka://`` whatever the security:
    faust picks aiokafka's security protocol from the credentials, not from the URL."""
    return [f"kafka://{host.strip()}" for host in settings.kafka_bootstrap.split(",")]


def broker_credentials(settings: Settings) -> CredentialsT | None:
    """Return faust's ``broker_credentials`` for ``settings.kafka_extra`` (None: plaintext).

    Translates ``security.protocol`` (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL),
    ``sasl.mechanism(s)`` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), ``sasl.username``,
    ``sasl.password`` and the ``ssl.*`` file properties. Raises :class:`ConfigError`
    naming every property that cannot be translated (OAUTHBEARER, GSSAPI, PKCS#12
    keystores, PEM strings for the client key, and any unknown property).
    """
    props = settings.kafka_extra_values()
    ignored = sorted(k for k in props if k in LIBRDKAFKA_ONLY)
    for key in ignored:
        del props[key]
    if ignored:
        log.info("%s: not used by the streams worker (librdkafka only): %s", _NAME, ignored)
    protocol = props.pop("security.protocol", "PLAINTEXT").upper()
    mechanisms = {props.pop(k) for k in ("sasl.mechanism", "sasl.mechanisms") if k in props}
    username = props.pop("sasl.username", None)
    password = props.pop("sasl.password", None)
    context = _ssl_context(props) if protocol in ("SSL", "SASL_SSL") else None
    if props:
        raise ConfigError(
            f"{_NAME}: the streams worker (faust/aiokafka) cannot use {sorted(props)} "
            f"with security.protocol {protocol}; remove them or connect another way"
        )
    if protocol == "PLAINTEXT" or protocol == "SSL":
        if mechanisms or username or password:
            raise ConfigError(f"{_NAME}: sasl.* properties need a SASL security.protocol")
        return None if context is None else faust.SSLCredentials(context)
    if protocol not in ("SASL_PLAINTEXT", "SASL_SSL"):
        raise ConfigError(f"{_NAME}: unknown security.protocol {protocol}")
    if len(mechanisms) > 1:
        raise ConfigError(f"{_NAME}: sasl.mechanism and sasl.mechanisms differ")
    # librdkafka's default mechanism is GSSAPI.
    mechanism = mechanisms.pop().upper() if mechanisms else "GSSAPI"
    if mechanism not in PASSWORD_MECHANISMS:
        raise ConfigError(
            f"{_NAME}: sasl.mechanism {mechanism} cannot be given to the streams worker "
            f"(it takes {', '.join(sorted(PASSWORD_MECHANISMS))})"
        )
    if not username or not password:
        raise ConfigError(
            f"{_NAME}: sasl.mechanism {mechanism} needs sasl.username and sasl.password"
        )
    return faust.SASLCredentials(
        username=username, password=password, mechanism=mechanism, ssl_context=context
    )


def _ssl_context(props: dict[str, str]) -> ssl.SSLContext:
    """Build the TLS context of the ``ssl.*`` properties, removing them from ``props``."""
    ca = props.pop("ssl.ca.location", None)
    ca_pem = props.pop("ssl.ca.pem", None)
    try:
        if ca is None or ca == "probe":
            context = ssl.create_default_context(cadata=ca_pem)
        elif Path(ca).is_dir():
            context = ssl.create_default_context(capath=ca, cadata=ca_pem)
        else:
            context = ssl.create_default_context(cafile=ca, cadata=ca_pem)
        identification = props.pop("ssl.endpoint.identification.algorithm", "https").lower()
        if identification not in ("https", "none"):
            raise ConfigError(f"{_NAME}: unknown ssl.endpoint.identification.algorithm")
        context.check_hostname = identification == "https"
        verify = props.pop("enable.ssl.certificate.verification", "true").lower()
        if verify in ("false", "0"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        cert = props.pop("ssl.certificate.location", None)
        key = props.pop("ssl.key.location", None)
        key_password = props.pop("ssl.key.password", None)
        if cert:
            context.load_cert_chain(cert, key, password=key_password)
        elif key or key_password:
            raise ConfigError(f"{_NAME}: ssl.key.location needs ssl.certificate.location")
        ciphers = props.pop("ssl.cipher.suites", None)
        if ciphers:
            context.set_ciphers(ciphers)
    except (OSError, ssl.SSLError) as e:
        # The message names the file or the cipher list, never a password.
        raise ConfigError(f"{_NAME}: cannot set up TLS for the streams worker: {e}") from e
    return context
