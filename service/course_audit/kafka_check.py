"""Why the brokers cannot be used: one line per failure, before a Kafka client starts.

aiokafka's own start-up only says "Unable to bootstrap from [...]" whatever went wrong. So a
consumer (and `produce`) first connects to the bootstrap brokers the way its client will (TLS,
SASL) and asks for metadata; a failure is raised as `KafkaUnavailable`, whose message says
what went wrong where: `kafka authentication failed`, `kafka TLS handshake failed`, `kafka
unreachable` ... with the broker's address, never a password.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.metadata import MetadataRequest

#: How long one broker's connect, handshake and metadata answer may take.
PROBE_TIMEOUT_S = 15.0

_AUTH_ERRORS = (SaslAuthenticationFailed, IllegalSaslStateError, UnsupportedSaslMechanismError)


class KafkaUnavailable(Exception):
    """No bootstrap broker could be used; `kind` is `authentication`, `tls`, `unreachable`
    or `connection`, and the message one line naming the broker(s)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def describe(
    broker: str, exc: BaseException, identity: str, protocol: str = "PLAINTEXT"
) -> tuple[str, str]:
    """(kind, one line) for a failure to use `broker`; `identity` is how the client presented
    itself (mechanism and user name, or client certificate), `protocol` its security
    protocol."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or str(exc)
        return (
            "tls",
            f"kafka TLS handshake failed with {broker}: certificate verify failed: {detail}",
        )
    if isinstance(exc, ssl.SSLError):
        detail = exc.reason or str(exc)
        return "tls", f"kafka TLS handshake failed with {broker}: {detail}"
    if isinstance(exc, _AUTH_ERRORS):
        detail = _kafka_error_text(exc)
        return "authentication", f"kafka authentication failed at {broker} ({identity}): {detail}"
    if isinstance(exc, TimeoutError):
        return (
            "unreachable",
            f"kafka unreachable at {broker}: no answer within {PROBE_TIMEOUT_S:g} s",
        )
    if isinstance(exc, OSError):
        return "unreachable", f"kafka unreachable at {broker}: {exc.strerror or exc}"
    if isinstance(exc, KafkaConnectionError) and "closed" in str(exc):
        # What a listener does to a client speaking another protocol (TLS to a SASL one,
        # plain text to a TLS one) or, for mutual TLS, to one without a certificate.
        return "connection", (
            f"kafka connection to {broker} failed: closed by the other end ({protocol},"
            f" {identity}); if it lasts, check that this listener expects {protocol}"
            " (and, for mutual TLS, a client certificate)"
        )
    if isinstance(exc, KafkaError):
        return "connection", f"kafka connection to {broker} failed: {_kafka_error_text(exc)}"
    return "connection", f"kafka connection to {broker} failed: {type(exc).__name__}: {exc}"


def _kafka_error_text(exc: BaseException) -> str:
    text = str(exc)
    return text if text and text != type(exc).__name__ else type(exc).__name__


async def probe(options: dict[str, Any], identity: str) -> None:
    """Connect to the bootstrap brokers of `options` (aiokafka client options, as
    `security.kafka_options` makes them) in turn, until one answers a metadata request.

    Raises KafkaUnavailable when none does: its kind is the first broker's, its message
    lists every broker's failure.
    """
    failures: list[tuple[str, str]] = []
    for host, port, _ in collect_hosts(options["bootstrap_servers"]):
        broker = f"{host}:{port}"
        conn = None
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                conn = await create_conn(
                    host,
                    port,
                    client_id="course-audit-probe",
                    request_timeout_ms=int(PROBE_TIMEOUT_S * 1000),
                    security_protocol=options["security_protocol"],
                    ssl_context=options.get("ssl_context"),
                    sasl_mechanism=options.get("sasl_mechanism"),
                    sasl_plain_username=options.get("sasl_plain_username"),
                    sasl_plain_password=options.get("sasl_plain_password"),
                )
                await conn.send(MetadataRequest([]))
            return
        except (OSError, TimeoutError, KafkaError) as exc:
            failures.append(describe(broker, exc, identity, options["security_protocol"]))
        finally:
            if conn is not None:
                conn.close()
    kind = failures[0][0]
    raise KafkaUnavailable(kind, "; ".join(line for _, line in failures))
