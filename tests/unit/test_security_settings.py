"""Secured Kafka and registry settings: every bad combination is one line naming the setting;
good ones become the client options; a Kafka failure is one line, logged once per change."""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed

from course_audit.config import ConfigError, Settings
from course_audit.kafka_check import KafkaUnavailable, describe
from course_audit.retry import Backoff, RepeatLimiter
from course_audit.runtime.health import Health
from course_audit.runtime.metrics import Metrics
from course_audit.runtime.runner import supervise_consumer
from course_audit.security import kafka_options, registry_authorization, registry_ssl_context
from tls_files import Issued, Pki
from waits import eventually, within


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"), "unit")


@pytest.fixture(scope="module")
def client(pki: Pki) -> Issued:
    return pki.issue("client")


@pytest.fixture(scope="module")
def locked_client(pki: Pki) -> Issued:
    return pki.issue("locked", key_password="open sesame")


def sasl_ssl(pki: Pki, **more: str) -> dict[str, str]:
    return {
        "AUDIT_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "AUDIT_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "AUDIT_KAFKA_SASL_USERNAME": "audit",
        "AUDIT_KAFKA_SASL_PASSWORD": "s3cret-pw",
        "AUDIT_KAFKA_SSL_CA_FILE": str(pki.ca),
        **more,
    }


def refused(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------ refused combinations


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        (
            {"AUDIT_KAFKA_SECURITY_PROTOCOL": "TLS"},
            "AUDIT_KAFKA_SECURITY_PROTOCOL='TLS' must be one of PLAINTEXT, SSL, SASL_PLAINTEXT",
        ),
        (
            {"AUDIT_KAFKA_SASL_MECHANISM": "SCRAM-SHA-1"},
            "AUDIT_KAFKA_SASL_MECHANISM='SCRAM-SHA-1' must be one of PLAIN, SCRAM-SHA-256",
        ),
        (
            {"AUDIT_KAFKA_SASL_MECHANISM": "oauthbearer"},
            "AUDIT_KAFKA_SASL_MECHANISM=OAUTHBEARER is not supported",
        ),
        (
            {"AUDIT_KAFKA_SASL_MECHANISM": "PLAIN"},
            "AUDIT_KAFKA_SASL_MECHANISM is set but AUDIT_KAFKA_SECURITY_PROTOCOL=PLAINTEXT"
            " does not use SASL",
        ),
        (
            {"AUDIT_KAFKA_SECURITY_PROTOCOL": "SSL", "AUDIT_KAFKA_SASL_USERNAME": "audit"},
            "AUDIT_KAFKA_SASL_USERNAME is set but AUDIT_KAFKA_SECURITY_PROTOCOL=SSL does not"
            " use SASL",
        ),
        (
            {"AUDIT_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
            "AUDIT_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs AUDIT_KAFKA_SASL_MECHANISM",
        ),
        (
            {
                "AUDIT_KAFKA_SECURITY_PROTOCOL": "sasl_plaintext",
                "AUDIT_KAFKA_SASL_MECHANISM": "PLAIN",
            },
            "AUDIT_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT needs AUDIT_KAFKA_SASL_USERNAME",
        ),
        (
            {
                "AUDIT_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "AUDIT_KAFKA_SASL_MECHANISM": "PLAIN",
                "AUDIT_KAFKA_SASL_USERNAME": "audit",
            },
            "AUDIT_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT needs AUDIT_KAFKA_SASL_PASSWORD or"
            " AUDIT_KAFKA_SASL_PASSWORD_FILE",
        ),
        (
            {"AUDIT_KAFKA_SSL_CHECK_HOSTNAME": "false"},
            "AUDIT_KAFKA_SSL_CHECK_HOSTNAME is set but AUDIT_KAFKA_SECURITY_PROTOCOL=PLAINTEXT"
            " does not use TLS",
        ),
        (
            {
                "AUDIT_KAFKA_SSL_KEY_PASSWORD": "pw",
                "AUDIT_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            },
            "AUDIT_KAFKA_SASL_MECHANISM",  # the first thing missing is named first
        ),
        (
            {"AUDIT_KAFKA_SECURITY_PROTOCOL": "SSL", "AUDIT_KAFKA_SSL_KEY_PASSWORD": "pw"},
            "AUDIT_KAFKA_SSL_KEY_PASSWORD is set without AUDIT_KAFKA_SSL_KEY_FILE",
        ),
        (
            {"AUDIT_KAFKA_SSL_CA_FILE": "/nonexistent/ca.pem"},
            "AUDIT_KAFKA_SSL_CA_FILE: cannot read '/nonexistent/ca.pem': No such file or directory",
        ),
        (
            {"AUDIT_SCHEMA_REGISTRY_USERNAME": "reader"},
            "AUDIT_SCHEMA_REGISTRY_USERNAME is set but AUDIT_SCHEMA_REGISTRY_URL is not",
        ),
        (
            {
                "AUDIT_SCHEMA_REGISTRY_URL": "https://registry.example.edu",
                "AUDIT_SCHEMA_REGISTRY_USERNAME": "reader",
            },
            "AUDIT_SCHEMA_REGISTRY_USERNAME needs AUDIT_SCHEMA_REGISTRY_PASSWORD or"
            " AUDIT_SCHEMA_REGISTRY_PASSWORD_FILE",
        ),
        (
            {
                "AUDIT_SCHEMA_REGISTRY_URL": "https://registry.example.edu",
                "AUDIT_SCHEMA_REGISTRY_PASSWORD": "pw",
            },
            "AUDIT_SCHEMA_REGISTRY_PASSWORD is set without AUDIT_SCHEMA_REGISTRY_USERNAME",
        ),
        (
            {
                "AUDIT_SCHEMA_REGISTRY_URL": "https://u:p@registry.example.edu",
                "AUDIT_SCHEMA_REGISTRY_USERNAME": "reader",
                "AUDIT_SCHEMA_REGISTRY_PASSWORD": "pw",
            },
            "AUDIT_SCHEMA_REGISTRY_URL carries credentials and AUDIT_SCHEMA_REGISTRY_USERNAME",
        ),
    ],
)
def test_a_bad_combination_is_one_line_naming_the_setting(
    env: dict[str, str], fragment: str
) -> None:
    assert fragment in refused(env)


def test_tls_files_without_a_tls_protocol_are_refused(pki: Pki, client: Issued) -> None:
    for name, path in (
        ("AUDIT_KAFKA_SSL_CA_FILE", pki.ca),
        ("AUDIT_KAFKA_SSL_CERT_FILE", client.cert),
        ("AUDIT_KAFKA_SSL_KEY_FILE", client.key),
    ):
        for protocol in ("PLAINTEXT", "SASL_PLAINTEXT"):
            env = {"AUDIT_KAFKA_SECURITY_PROTOCOL": protocol, name: str(path)}
            if protocol == "SASL_PLAINTEXT":
                env |= {
                    "AUDIT_KAFKA_SASL_MECHANISM": "PLAIN",
                    "AUDIT_KAFKA_SASL_USERNAME": "u",
                    "AUDIT_KAFKA_SASL_PASSWORD": "p",
                }
            assert refused(env) == (
                f"{name} is set but AUDIT_KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS"
                " (use SSL or SASL_SSL)"
            )


def test_a_certificate_without_its_key_and_a_key_without_its_certificate(
    pki: Pki, client: Issued
) -> None:
    base = {"AUDIT_KAFKA_SECURITY_PROTOCOL": "SSL", "AUDIT_KAFKA_SSL_CA_FILE": str(pki.ca)}
    assert refused(base | {"AUDIT_KAFKA_SSL_CERT_FILE": str(client.cert)}) == (
        "AUDIT_KAFKA_SSL_CERT_FILE is set without AUDIT_KAFKA_SSL_KEY_FILE"
        " (the client certificate's key)"
    )
    assert refused(base | {"AUDIT_KAFKA_SSL_KEY_FILE": str(client.key)}) == (
        "AUDIT_KAFKA_SSL_KEY_FILE is set without AUDIT_KAFKA_SSL_CERT_FILE (the client certificate)"
    )


def test_files_that_are_not_what_they_should_be(
    pki: Pki, client: Issued, locked_client: Issued, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    message = refused(sasl_ssl(pki, AUDIT_KAFKA_SSL_CA_FILE=str(garbage)))
    assert message.startswith(f"AUDIT_KAFKA_SSL_CA_FILE: '{garbage}' holds no usable PEM CA")
    mtls = {"AUDIT_KAFKA_SECURITY_PROTOCOL": "SSL", "AUDIT_KAFKA_SSL_CA_FILE": str(pki.ca)}
    # A key that is not the certificate's.
    other = pki.issue("other")
    message = refused(
        mtls
        | {
            "AUDIT_KAFKA_SSL_CERT_FILE": str(client.cert),
            "AUDIT_KAFKA_SSL_KEY_FILE": str(other.key),
        }
    )
    assert message.startswith(
        "AUDIT_KAFKA_SSL_CERT_FILE/AUDIT_KAFKA_SSL_KEY_FILE: cannot load the client certificate"
    )
    assert "KEY_VALUES_MISMATCH" in message
    locked = {
        "AUDIT_KAFKA_SSL_CERT_FILE": str(locked_client.cert),
        "AUDIT_KAFKA_SSL_KEY_FILE": str(locked_client.key),
    }
    for wrong in ({}, {"AUDIT_KAFKA_SSL_KEY_PASSWORD": "not it"}):
        message = refused(mtls | locked | wrong)
        assert "cannot load the client certificate" in message
        assert "not it" not in message
    # The right key password opens it.
    Settings.from_env(mtls | locked | {"AUDIT_KAFKA_SSL_KEY_PASSWORD": "open sesame"})


def test_password_files(pki: Pki, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    env = sasl_ssl(pki)
    del env["AUDIT_KAFKA_SASL_PASSWORD"]
    assert refused(env | {"AUDIT_KAFKA_SASL_PASSWORD_FILE": str(empty)}) == (
        f"AUDIT_KAFKA_SASL_PASSWORD_FILE: '{empty}' is empty"
    )
    assert refused(env | {"AUDIT_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "gone")}) == (
        f"AUDIT_KAFKA_SASL_PASSWORD_FILE: cannot read '{tmp_path / 'gone'}':"
        " No such file or directory"
    )
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    both = sasl_ssl(pki, AUDIT_KAFKA_SASL_PASSWORD_FILE=str(secret))
    assert refused(both) == (
        "set AUDIT_KAFKA_SASL_PASSWORD or AUDIT_KAFKA_SASL_PASSWORD_FILE, not both"
    )
    settings = Settings.from_env(env | {"AUDIT_KAFKA_SASL_PASSWORD_FILE": str(secret)})
    assert kafka_options(settings)["sasl_plain_password"] == "from-a-file"
    # Read again for each client: a rotated secret is used by the next one.
    secret.write_text("rotated")
    assert kafka_options(settings)["sasl_plain_password"] == "rotated"


# ------------------------------------------------------------------ accepted settings


def test_the_default_is_plaintext_without_tls_or_sasl() -> None:
    assert kafka_options(Settings.from_env({})) == {
        "bootstrap_servers": "localhost:9092",
        "security_protocol": "PLAINTEXT",
    }


def test_sasl_ssl_options(pki: Pki) -> None:
    settings = Settings.from_env(sasl_ssl(pki, AUDIT_KAFKA_SASL_MECHANISM="scram-sha-256"))
    options = kafka_options(settings)
    context = options.pop("ssl_context")
    assert options == {
        "bootstrap_servers": "localhost:9092",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "audit",
        "sasl_plain_password": "s3cret-pw",
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert len(context.get_ca_certs()) == 1  # ours alone: the system's are not loaded


def test_hostname_checking_can_be_turned_off_but_not_the_chain(pki: Pki) -> None:
    settings = Settings.from_env(sasl_ssl(pki, AUDIT_KAFKA_SSL_CHECK_HOSTNAME="false"))
    context = kafka_options(settings)["ssl_context"]
    assert context.check_hostname is False and context.verify_mode == ssl.CERT_REQUIRED


def test_mutual_tls_options(pki: Pki, client: Issued) -> None:
    settings = Settings.from_env(
        {
            "AUDIT_KAFKA_SECURITY_PROTOCOL": "SSL",
            "AUDIT_KAFKA_SSL_CA_FILE": str(pki.ca),
            "AUDIT_KAFKA_SSL_CERT_FILE": str(client.cert),
            "AUDIT_KAFKA_SSL_KEY_FILE": str(client.key),
        }
    )
    options = kafka_options(settings)
    assert options["security_protocol"] == "SSL" and "sasl_mechanism" not in options


def test_passwords_stay_out_of_the_settings_repr(pki: Pki) -> None:
    settings = Settings.from_env(
        sasl_ssl(
            pki,
            AUDIT_SCHEMA_REGISTRY_URL="https://registry.example.edu",
            AUDIT_SCHEMA_REGISTRY_USERNAME="reader",
            AUDIT_SCHEMA_REGISTRY_PASSWORD="registry-pw",
        )
    )
    text = repr(settings)
    assert "s3cret-pw" not in text and "registry-pw" not in text
    assert "kafka_sasl_username='audit'" in text


def test_registry_credentials_and_ca(pki: Pki, tmp_path: Path) -> None:
    secret = tmp_path / "registry-secret"
    secret.write_text("registry-pw\n")
    settings = Settings.from_env(
        {
            "AUDIT_SCHEMA_REGISTRY_URL": "https://registry.example.edu",
            "AUDIT_SCHEMA_REGISTRY_USERNAME": "reader",
            "AUDIT_SCHEMA_REGISTRY_PASSWORD_FILE": str(secret),
            "AUDIT_SCHEMA_REGISTRY_CA_FILE": str(pki.ca),
        }
    )
    expected = "Basic " + base64.b64encode(b"reader:registry-pw").decode()
    assert registry_authorization(settings) == expected
    context = registry_ssl_context(settings)
    assert context is not None and len(context.get_ca_certs()) == 1
    assert (
        refused(
            {
                "AUDIT_SCHEMA_REGISTRY_URL": "http://registry.example.edu",
                "AUDIT_SCHEMA_REGISTRY_CA_FILE": str(pki.ca),
            }
        )
        == "AUDIT_SCHEMA_REGISTRY_CA_FILE is set but AUDIT_SCHEMA_REGISTRY_URL is not an https URL"
    )
    # Credentials in the URL alone are aiohttp's to send.
    in_url = Settings.from_env({"AUDIT_SCHEMA_REGISTRY_URL": "https://u:p@registry.example.edu"})
    assert registry_authorization(in_url) is None


# ------------------------------------------------------------------ Kafka failures


def test_failures_are_described_in_one_line_without_secrets() -> None:
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "unable to get local issuer certificate"
    assert describe("b:9093", verify, "SCRAM-SHA-512 as 'audit'") == (
        "tls",
        "kafka TLS handshake failed with b:9093: certificate verify failed:"
        " unable to get local issuer certificate",
    )
    auth = SaslAuthenticationFailed("Authentication failed: Invalid username or password")
    kind, line = describe("b:9093", auth, "PLAIN as 'audit'", "SASL_SSL")
    assert kind == "authentication"
    assert line.startswith("kafka authentication failed at b:9093 (PLAIN as 'audit'): ")
    assert line.endswith("Invalid username or password")
    refused_ = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 9)")
    assert describe("127.0.0.1:9", refused_, "no credentials") == (
        "unreachable",
        "kafka unreachable at 127.0.0.1:9: Connect call failed ('127.0.0.1', 9)",
    )
    closed = KafkaConnectionError("Connection at b:9093 closed")
    kind, line = describe("b:9093", closed, "no credentials", "SSL")
    assert kind == "connection" and "closed by the other end (SSL, no credentials)" in line


def test_a_repeated_failure_is_logged_once_then_on_change_or_after_the_interval() -> None:
    now = [0.0]
    limiter = RepeatLimiter(every=60, clock=lambda: now[0])
    assert limiter.admit("auth failed") == 0
    now[0] = 10
    assert limiter.admit("auth failed") is None
    now[0] = 20
    assert limiter.admit("auth failed") is None
    now[0] = 60
    assert limiter.admit("auth failed") == 2  # two repeats were not logged
    assert limiter.admit("tls failed") == 0  # a change is logged at once
    assert limiter.admit("auth failed") == 0
    limiter.reset()
    assert limiter.admit("auth failed") == 0


class FailingIngestor:
    joined = False

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def run(self) -> None:
        raise self.error

    def stop(self) -> None:
        pass


async def test_the_supervisor_logs_a_kafka_failure_once_and_counts_every_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    health = Health(subscribed=False)
    metrics = Metrics()
    stopping = asyncio.Event()
    failure = KafkaUnavailable(
        "authentication", "kafka authentication failed at b:9093 (PLAIN as 'audit'): bad"
    )

    def make() -> Any:
        return FailingIngestor(failure)

    def attempts() -> float:
        value = metrics.registry.get_sample_value(
            "course_audit_kafka_connect_failures_total", {"kind": "authentication"}
        )
        return value or 0.0

    async def counted() -> float:
        return attempts()

    caplog.set_level(logging.DEBUG, logger="course_audit.runtime.runner")
    task = asyncio.create_task(
        supervise_consumer(make, health, stopping, Backoff(first=0.001, cap=0.001), metrics=metrics)
    )
    await eventually(counted, lambda n: n >= 5, 5, "five failed attempts")
    stopping.set()
    await within(task, 5, "the supervisor to return")
    lines = [r for r in caplog.records if r.name == "course_audit.runtime.runner"]
    assert [r.getMessage() for r in lines] == [str(failure)]
    assert lines[0].exc_info is None and lines[0].levelno == logging.ERROR
    assert lines[0].__dict__["kafka_error"] == "authentication"
    assert health.consumer_error == str(failure) and not health.ready
