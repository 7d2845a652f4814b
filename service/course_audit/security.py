"""TLS and credentials for Kafka and the schema registry, built from `Settings`.

Every Kafka client of the service (consumer, producer) takes its connection options from
`kafka_options`, and every registry session from `registry_session`: one place builds the TLS
context and reads the passwords. `check` refuses a bad combination of these settings with one
line naming the variable; `Settings.from_env` calls it, so a process never starts with one.

Passwords given as files (a Kubernetes secret mounted as a file) are read when a client is
built, never logged, and a trailing newline is dropped.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from course_audit.envparse import ConfigError

if TYPE_CHECKING:
    from course_audit.config import Settings

TLS_PROTOCOLS = ("SSL", "SASL_SSL")
SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")

_PROTOCOL = "AUDIT_KAFKA_SECURITY_PROTOCOL"
_MECHANISM = "AUDIT_KAFKA_SASL_MECHANISM"
_USER = "AUDIT_KAFKA_SASL_USERNAME"
_PASSWORD = "AUDIT_KAFKA_SASL_PASSWORD"
_PASSWORD_FILE = "AUDIT_KAFKA_SASL_PASSWORD_FILE"
_CA = "AUDIT_KAFKA_SSL_CA_FILE"
_CERT = "AUDIT_KAFKA_SSL_CERT_FILE"
_KEY = "AUDIT_KAFKA_SSL_KEY_FILE"
_KEY_PASSWORD = "AUDIT_KAFKA_SSL_KEY_PASSWORD"
_CHECK_HOSTNAME = "AUDIT_KAFKA_SSL_CHECK_HOSTNAME"
_REGISTRY = "AUDIT_SCHEMA_REGISTRY_URL"
_REGISTRY_USER = "AUDIT_SCHEMA_REGISTRY_USERNAME"
_REGISTRY_PASSWORD = "AUDIT_SCHEMA_REGISTRY_PASSWORD"
_REGISTRY_PASSWORD_FILE = "AUDIT_SCHEMA_REGISTRY_PASSWORD_FILE"
_REGISTRY_CA = "AUDIT_SCHEMA_REGISTRY_CA_FILE"


def check(s: Settings) -> None:
    """Refuse a combination of security settings that cannot work, with one line."""
    _check_kafka(s)
    _check_registry(s)


def _check_kafka(s: Settings) -> None:
    protocol = s.kafka_security_protocol
    said = f"{_PROTOCOL}={protocol}"
    if protocol in SASL_PROTOCOLS:
        if s.kafka_sasl_mechanism is None:
            raise ConfigError(f"{said} needs {_MECHANISM} (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)")
        if s.kafka_sasl_username is None:
            raise ConfigError(f"{said} needs {_USER}")
        _one_password(s.kafka_sasl_password, s.kafka_sasl_password_file, _PASSWORD, needed=said)
    else:
        for name, value in (
            (_MECHANISM, s.kafka_sasl_mechanism),
            (_USER, s.kafka_sasl_username),
            (_PASSWORD, s.kafka_sasl_password),
            (_PASSWORD_FILE, s.kafka_sasl_password_file),
        ):
            if value is not None:
                raise ConfigError(
                    f"{name} is set but {said} does not use SASL (use SASL_SSL or SASL_PLAINTEXT)"
                )
    if protocol not in TLS_PROTOCOLS:
        for name, given in (
            (_CA, s.kafka_ssl_ca_file is not None),
            (_CERT, s.kafka_ssl_cert_file is not None),
            (_KEY, s.kafka_ssl_key_file is not None),
            (_KEY_PASSWORD, s.kafka_ssl_key_password is not None),
            (_CHECK_HOSTNAME, not s.kafka_ssl_check_hostname),
        ):
            if given:
                raise ConfigError(
                    f"{name} is set but {said} does not use TLS (use SSL or SASL_SSL)"
                )
        return
    if s.kafka_ssl_cert_file is not None and s.kafka_ssl_key_file is None:
        raise ConfigError(f"{_CERT} is set without {_KEY} (the client certificate's key)")
    if s.kafka_ssl_key_file is not None and s.kafka_ssl_cert_file is None:
        raise ConfigError(f"{_KEY} is set without {_CERT} (the client certificate)")
    if s.kafka_ssl_key_password is not None and s.kafka_ssl_key_file is None:
        raise ConfigError(f"{_KEY_PASSWORD} is set without {_KEY}")
    kafka_ssl_context(s)  # a CA or key file that is not what it should be fails here


def _check_registry(s: Settings) -> None:
    given = [
        (name, value)
        for name, value in (
            (_REGISTRY_USER, s.schema_registry_username),
            (_REGISTRY_PASSWORD, s.schema_registry_password),
            (_REGISTRY_PASSWORD_FILE, s.schema_registry_password_file),
            (_REGISTRY_CA, s.schema_registry_ca_file),
        )
        if value is not None
    ]
    if s.schema_registry_url is None:
        if given:
            raise ConfigError(f"{given[0][0]} is set but {_REGISTRY} is not")
        return
    url = URL(s.schema_registry_url)
    if s.schema_registry_ca_file is not None and url.scheme != "https":
        raise ConfigError(f"{_REGISTRY_CA} is set but {_REGISTRY} is not an https URL")
    password_given = (
        s.schema_registry_password is not None or s.schema_registry_password_file is not None
    )
    if url.user is not None and (s.schema_registry_username is not None or password_given):
        raise ConfigError(
            f"{_REGISTRY} carries credentials and {_REGISTRY_USER}/{_REGISTRY_PASSWORD} are set"
            " too: give them one way"
        )
    if s.schema_registry_username is not None:
        _one_password(
            s.schema_registry_password,
            s.schema_registry_password_file,
            _REGISTRY_PASSWORD,
            needed=_REGISTRY_USER,
        )
    elif password_given:
        name = _REGISTRY_PASSWORD if s.schema_registry_password else _REGISTRY_PASSWORD_FILE
        raise ConfigError(f"{name} is set without {_REGISTRY_USER}")
    registry_ssl_context(s)


def _one_password(value: str | None, file: str | None, name: str, *, needed: str) -> None:
    if value is not None and file is not None:
        raise ConfigError(f"set {name} or {name}_FILE, not both")
    if value is None and file is None:
        raise ConfigError(f"{needed} needs {name} or {name}_FILE")
    if file is not None:
        read_secret(file, f"{name}_FILE")


def read_secret(path: str, name: str) -> str:
    """The secret in a file, without a trailing newline; ConfigError naming `name` if it
    cannot be read or is empty."""
    try:
        value = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{name}: cannot read {path!r}: {reason}") from None
    if not value:
        raise ConfigError(f"{name}: {path!r} is empty")
    return value


def _verifying_context(ca_file: str | None, name: str) -> ssl.SSLContext:
    """Checks certificates against `ca_file` alone when it is given, else the system's CAs."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            f"{name}: {ca_file!r} holds no usable PEM CA certificate ({_reason(exc)})"
        ) from None


def kafka_ssl_context(s: Settings) -> ssl.SSLContext | None:
    """The TLS context of Kafka connections (None without TLS): the brokers' certificates are
    checked against AUDIT_KAFKA_SSL_CA_FILE alone (else the system's CAs), with the client
    certificate for mutual TLS."""
    if s.kafka_security_protocol not in TLS_PROTOCOLS:
        return None
    context = _verifying_context(s.kafka_ssl_ca_file, _CA)
    context.check_hostname = s.kafka_ssl_check_hostname
    if s.kafka_ssl_cert_file is not None:
        try:
            context.load_cert_chain(
                s.kafka_ssl_cert_file,
                s.kafka_ssl_key_file,
                password=s.kafka_ssl_key_password,
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                f"{_CERT}/{_KEY}: cannot load the client certificate and its key"
                f" ({_reason(exc)}; a wrong {_KEY_PASSWORD} reads as a bad key)"
            ) from None
    return context


def sasl_password(s: Settings) -> str | None:
    """The SASL password, from its variable or its file (read now)."""
    if s.kafka_sasl_password_file is not None:
        return read_secret(s.kafka_sasl_password_file, _PASSWORD_FILE)
    return s.kafka_sasl_password


def kafka_options(s: Settings) -> dict[str, Any]:
    """The connection keyword arguments of an aiokafka client (consumer, producer, admin):
    brokers, security protocol, TLS context and SASL credentials."""
    options: dict[str, Any] = {
        "bootstrap_servers": s.kafka_bootstrap_servers,
        "security_protocol": s.kafka_security_protocol,
    }
    context = kafka_ssl_context(s)
    if context is not None:
        options["ssl_context"] = context
    if s.kafka_security_protocol in SASL_PROTOCOLS:
        options["sasl_mechanism"] = s.kafka_sasl_mechanism
        options["sasl_plain_username"] = s.kafka_sasl_username
        options["sasl_plain_password"] = sasl_password(s)
    return options


def kafka_identity(s: Settings) -> str:
    """How the client presents itself, for log lines: never the password."""
    if s.kafka_security_protocol in SASL_PROTOCOLS:
        return f"{s.kafka_sasl_mechanism} as {s.kafka_sasl_username!r}"
    if s.kafka_ssl_cert_file is not None:
        return f"client certificate {s.kafka_ssl_cert_file!r}"
    return "no credentials"


def registry_ssl_context(s: Settings) -> ssl.SSLContext | None:
    """The TLS context for an `https` registry with its own CA; None: aiohttp's default."""
    if s.schema_registry_ca_file is None:
        return None
    return _verifying_context(s.schema_registry_ca_file, _REGISTRY_CA)


def registry_authorization(s: Settings) -> str | None:
    """The registry's `Authorization` header from the settings (password read now), else None
    (credentials in the URL, if any, are sent by aiohttp itself)."""
    if s.schema_registry_username is None:
        return None
    password = (
        read_secret(s.schema_registry_password_file, _REGISTRY_PASSWORD_FILE)
        if s.schema_registry_password_file is not None
        else s.schema_registry_password or ""
    )
    return aiohttp.encode_basic_auth(s.schema_registry_username, password)


def registry_session(
    s: Settings, timeout: aiohttp.ClientTimeout | None = None
) -> aiohttp.ClientSession:
    """An HTTP session for the registry: its CA, its credentials."""
    context = registry_ssl_context(s)
    authorization = registry_authorization(s)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context) if context is not None else None,
        headers={"Authorization": authorization} if authorization is not None else None,
        timeout=timeout or aiohttp.ClientTimeout(total=30),
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
