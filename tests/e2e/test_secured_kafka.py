"""`course-audit consume` and `produce` against a real broker over SASL_SSL and mutual TLS.

The broker is one of this module's own (deploy/local/services.py `start_secured_kafka`): a
PLAINTEXT listener for the test's own admin work, a SASL_SSL listener (SCRAM-SHA-256,
SCRAM-SHA-512 and PLAIN) and an SSL listener that requires a client certificate. Its
certificate, signed by a CA made here with openssl, names 127.0.0.1 only, so reaching it as
`localhost` is a hostname mismatch. A refused consumer must say why in one line, be unready
and keep retrying without repeating that line; readiness and the metrics are polled for it.

The schema registry stand-in (tests/registry_stub.py) serves HTTPS with a certificate of the
same CA and wants basic auth; those tests use the session's PLAINTEXT broker.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from course_audit.produce.sample import World, sample_event
from harness import load_local_services
from pipeline import ENCODER, count_dead, count_events, produce
from registry_stub import RegistryStub
from service_process import ServiceProcess, service_env
from tls_files import Issued, Pki
from waits import eventually, within

pytestmark = pytest.mark.e2e

CLI = Path(sys.executable).parent / "course-audit"
SCRAM_USER, SCRAM_PASSWORD = "audit", "scram-pw-7f3a"
PLAIN_USER, PLAIN_PASSWORD = "producer", "plain-pw-91c2"
KEY_PASSWORD = "client-key-pw"


@dataclass(frozen=True)
class SecuredBroker:
    plaintext: str
    sasl_ssl: str
    ssl: str
    pki: Pki
    #: A CA the broker's certificate was not signed by.
    stranger: Pki
    #: A client certificate, its key unencrypted, and one whose key has KEY_PASSWORD.
    client: Issued
    locked_client: Issued


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    services = load_local_services()
    root = tmp_path_factory.mktemp("secured-kafka")
    pki = Pki.create(root / "pki", "main")
    keystore = pki.issue("broker", "127.0.0.1").keystore(root / "pki" / "broker-keystore.pem")
    secured = services.Secured(
        keystore=keystore,
        truststore=pki.ca,
        scram_users=((SCRAM_USER, SCRAM_PASSWORD),),
        plain_users=((PLAIN_USER, PLAIN_PASSWORD),),
    )
    kdir = root / "kafka"
    try:
        found = services.start_secured_kafka(kdir, secured)
        yield SecuredBroker(
            plaintext=found["PLAINTEXT"],
            sasl_ssl=found["SASL_SSL"],
            ssl=found["SSL"],
            pki=pki,
            stranger=Pki.create(root / "stranger", "stranger"),
            client=pki.issue("client"),
            locked_client=pki.issue("locked-client", key_password=KEY_PASSWORD),
        )
    finally:
        services.stop_kafka(kdir)


@pytest.fixture
async def secured_topic(secured: SecuredBroker) -> AsyncIterator[str]:
    name = f"t-{uuid.uuid4().hex[:12]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=secured.plaintext)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)])
        yield name
    finally:
        await admin.close()


def scram(secured: SecuredBroker, mechanism: str = "SCRAM-SHA-512", **more: str) -> dict[str, str]:
    return {
        "AUDIT_KAFKA_BOOTSTRAP_SERVERS": secured.sasl_ssl,
        "AUDIT_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "AUDIT_KAFKA_SASL_MECHANISM": mechanism,
        "AUDIT_KAFKA_SASL_USERNAME": SCRAM_USER,
        "AUDIT_KAFKA_SASL_PASSWORD": SCRAM_PASSWORD,
        "AUDIT_KAFKA_SSL_CA_FILE": str(secured.pki.ca),
        **more,
    }


def mutual_tls(secured: SecuredBroker, client: Issued, **more: str) -> dict[str, str]:
    return {
        "AUDIT_KAFKA_BOOTSTRAP_SERVERS": secured.ssl,
        "AUDIT_KAFKA_SECURITY_PROTOCOL": "SSL",
        "AUDIT_KAFKA_SSL_CA_FILE": str(secured.pki.ca),
        "AUDIT_KAFKA_SSL_CERT_FILE": str(client.cert),
        "AUDIT_KAFKA_SSL_KEY_FILE": str(client.key),
        **more,
    }


def events(seed: int, count: int) -> list[str]:
    world = World.build(seed=seed, courses=4)
    start = datetime.now(UTC) - timedelta(hours=1)
    return [
        json.dumps(sample_event(world, "updated", start + timedelta(seconds=i)))
        for i in range(count)
    ]


async def produce_cli(topic: str, lines: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run `course-audit produce` with `env` on `lines`; its exit status and stderr."""
    proc = await asyncio.create_subprocess_exec(
        str(CLI),
        "produce",
        env={**os.environ, "AUDIT_KAFKA_TOPICS": topic, **env},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await within(
        proc.communicate("\n".join(lines).encode() + b"\n"), 90, "`course-audit produce`"
    )
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def connect_failures(proc: ServiceProcess, kind: str) -> float:
    """course_audit_kafka_connect_failures_total{kind=...} from the process's /metrics."""
    async with aiohttp.ClientSession() as http, http.get(f"{proc.base_url}/metrics") as resp:
        text = await resp.text()
    found = re.search(
        rf'^course_audit_kafka_connect_failures_total{{kind="{kind}"}} (\S+)$', text, re.M
    )
    return float(found.group(1)) if found else 0.0


# ------------------------------------------------------------------ stored over SASL_SSL


async def test_consume_over_sasl_ssl_scram_stores_what_produce_sent_over_scram_and_plain(
    secured: SecuredBroker,
    secured_topic: str,
    migrated_db_url: str,
    group_id: str,
    tmp_path: Path,
) -> None:
    # The consumer's password comes from a file, as a mounted Kubernetes secret would.
    secret = tmp_path / "kafka-password"
    secret.write_text(SCRAM_PASSWORD + "\n")
    consumer_env = scram(secured, AUDIT_KAFKA_SASL_PASSWORD_FILE=str(secret))
    del consumer_env["AUDIT_KAFKA_SASL_PASSWORD"]
    env = service_env(migrated_db_url, "", secured_topic, group_id) | consumer_env
    proc = ServiceProcess("consume", env, tmp_path / "consume.log").start()
    try:
        await proc.wait_ready(90)
        status, err = await produce_cli(
            secured_topic, events(1, 30), scram(secured, "SCRAM-SHA-256")
        )
        assert (status, err.strip().splitlines()[-1]) == (0, "sent 30 event(s), rejected 0 line(s)")
        plain = scram(
            secured,
            "PLAIN",
            AUDIT_KAFKA_SASL_USERNAME=PLAIN_USER,
            AUDIT_KAFKA_SASL_PASSWORD=PLAIN_PASSWORD,
        )
        status, err = await produce_cli(secured_topic, events(2, 20), plain)
        assert (status, err.strip().splitlines()[-1]) == (0, "sent 20 event(s), rejected 0 line(s)")
        await eventually(
            lambda: count_events(migrated_db_url), lambda n: n == 50, 60, "50 events stored"
        )
        assert SCRAM_PASSWORD not in proc.log_text()
    finally:
        proc.stop()


async def test_consume_and_produce_over_mutual_tls(
    secured: SecuredBroker,
    secured_topic: str,
    migrated_db_url: str,
    group_id: str,
    tmp_path: Path,
) -> None:
    consumer_env = mutual_tls(
        secured, secured.locked_client, AUDIT_KAFKA_SSL_KEY_PASSWORD=KEY_PASSWORD
    )
    env = service_env(migrated_db_url, "", secured_topic, group_id) | consumer_env
    proc = ServiceProcess("consume", env, tmp_path / "consume.log").start()
    try:
        await proc.wait_ready(90)
        status, err = await produce_cli(
            secured_topic, events(3, 25), mutual_tls(secured, secured.client)
        )
        assert (status, err.strip().splitlines()[-1]) == (0, "sent 25 event(s), rejected 0 line(s)")
        await eventually(
            lambda: count_events(migrated_db_url), lambda n: n == 25, 60, "25 events stored"
        )
    finally:
        proc.stop()


# ------------------------------------------------------------------ refused: one line, unready


@pytest.mark.parametrize(
    ("case", "kind", "expected"),
    [
        (
            "wrong password",
            "authentication",
            "kafka authentication failed at {sasl_ssl} (SCRAM-SHA-512 as 'audit'): "
            "[Error 58] SaslAuthenticationFailed: Authentication failed during authentication"
            " due to invalid credentials with SASL mechanism SCRAM-SHA-512",
        ),
        (
            "untrusted CA",
            "tls",
            "kafka TLS handshake failed with {sasl_ssl}: certificate verify failed:"
            " unable to get local issuer certificate",
        ),
        (
            "hostname mismatch",
            "tls",
            "kafka TLS handshake failed with {localhost}: certificate verify failed:"
            " Hostname mismatch, certificate is not valid for 'localhost'.",
        ),
    ],
)
async def test_a_refused_consumer_says_why_once_is_unready_and_keeps_retrying(
    secured: SecuredBroker,
    secured_topic: str,
    migrated_db_url: str,
    group_id: str,
    tmp_path: Path,
    case: str,
    kind: str,
    expected: str,
) -> None:
    localhost = secured.sasl_ssl.replace("127.0.0.1", "localhost")
    line = expected.format(sasl_ssl=secured.sasl_ssl, localhost=localhost)
    wrong = {
        "wrong password": scram(secured, AUDIT_KAFKA_SASL_PASSWORD="not-the-password"),
        "untrusted CA": scram(secured, AUDIT_KAFKA_SSL_CA_FILE=str(secured.stranger.ca)),
        "hostname mismatch": scram(secured, AUDIT_KAFKA_BOOTSTRAP_SERVERS=localhost),
    }[case]
    env = service_env(migrated_db_url, "", secured_topic, group_id) | wrong
    proc = ServiceProcess("consume", env, tmp_path / "consume.log").start()
    try:
        await proc.listening()
        logged = await proc.wait_log(json.dumps(line)[1:-1], 60)
        record = json.loads(logged[0])
        assert (record["level"], record["msg"], record["kafka_error"]) == ("error", line, kind)
        assert "exc" not in record  # no traceback
        # Retried with backoff (1 s, 2 s, ...): a second failed attempt, counted but not logged.
        await eventually(
            lambda: connect_failures(proc, kind),
            lambda failures: failures >= 2,
            60,
            "a second failed attempt in /metrics",
            interval=0.2,
        )
        health = await proc.wait_health(
            lambda h: h is not None and h[0] == 503 and h[1]["consumer_error"] == line,
            30,
            "unready, naming the failure",
        )
        assert health is not None and health[1]["subscribed"] is False
        assert proc.proc is not None and proc.proc.poll() is None  # still running
        text = proc.log_text()
        assert text.count(json.dumps(line)[1:-1]) == 1, text[-3000:]
        assert "not-the-password" not in text and SCRAM_PASSWORD not in text
        assert "Traceback" not in text
    finally:
        proc.stop()


async def test_produce_refused_by_the_broker_exits_1_with_one_line(
    secured: SecuredBroker, secured_topic: str
) -> None:
    status, err = await produce_cli(
        secured_topic, events(4, 1), scram(secured, AUDIT_KAFKA_SASL_PASSWORD="not-the-password")
    )
    assert status == 1
    assert err.strip().splitlines()[-1] == (
        f"course-audit: kafka authentication failed at {secured.sasl_ssl} (SCRAM-SHA-512 as"
        " 'audit'): [Error 58] SaslAuthenticationFailed: Authentication failed during"
        " authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512"
    )
    assert "Traceback" not in err and "not-the-password" not in err


# ------------------------------------------------------------------ the schema registry


def registry_tls(pki: Pki) -> ssl.SSLContext:
    server = pki.issue("registry", "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server.cert, server.key)
    return context


def confluent_values(schema_id: int, count: int) -> list[bytes]:
    world = World.build(seed=9, courses=3)
    start = datetime.now(UTC) - timedelta(hours=1)
    values = []
    for i in range(count):
        name, datum = ENCODER.event_from_json(
            sample_event(world, "published", start + timedelta(seconds=i))
        )
        values.append(ENCODER.encode_confluent(schema_id, name, datum))
    return values


async def test_the_consumer_fetches_schemas_over_https_with_basic_auth(
    secured: SecuredBroker,
    migrated_db_url: str,
    kafka_bootstrap: str,
    topic: str,
    group_id: str,
    tmp_path: Path,
) -> None:
    secret = tmp_path / "registry-password"
    secret.write_text("registry-pw-55\n")
    stub = RegistryStub(tls=registry_tls(secured.pki), credentials=("reader", "registry-pw-55"))
    async with stub:
        stub.register(7, ENCODER.schema_json("published"))
        env = service_env(
            migrated_db_url,
            kafka_bootstrap,
            topic,
            group_id,
            AUDIT_SCHEMA_REGISTRY_URL=stub.url,
            AUDIT_SCHEMA_REGISTRY_CA_FILE=str(secured.pki.ca),
            AUDIT_SCHEMA_REGISTRY_USERNAME="reader",
            AUDIT_SCHEMA_REGISTRY_PASSWORD_FILE=str(secret),
        )
        assert stub.url.startswith("https://")
        proc = ServiceProcess("consume", env, tmp_path / "consume.log").start()
        try:
            await proc.wait_ready(60)
            await produce(kafka_bootstrap, topic, confluent_values(7, 12))
            await eventually(
                lambda: count_events(migrated_db_url), lambda n: n == 12, 60, "12 events stored"
            )
            assert stub.requests == [7] and stub.unauthorized == 0
        finally:
            proc.stop()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong password", "HTTP 401, the registry refused the credentials"),
        ("untrusted CA", "certificate verify failed"),
    ],
)
async def test_a_refused_registry_fetch_is_a_clear_line_and_readiness_false_not_dead_letters(
    secured: SecuredBroker,
    migrated_db_url: str,
    kafka_bootstrap: str,
    topic: str,
    group_id: str,
    tmp_path: Path,
    case: str,
    expected: str,
) -> None:
    stub = RegistryStub(tls=registry_tls(secured.pki), credentials=("reader", "registry-pw-55"))
    async with stub:
        stub.register(7, ENCODER.schema_json("published"))
        ca = secured.stranger.ca if case == "untrusted CA" else secured.pki.ca
        password = "registry-pw-55" if case == "untrusted CA" else "wrong-registry-pw"
        env = service_env(
            migrated_db_url,
            kafka_bootstrap,
            topic,
            group_id,
            AUDIT_SCHEMA_REGISTRY_URL=stub.url,
            AUDIT_SCHEMA_REGISTRY_CA_FILE=str(ca),
            AUDIT_SCHEMA_REGISTRY_USERNAME="reader",
            AUDIT_SCHEMA_REGISTRY_PASSWORD=password,
        )
        proc = ServiceProcess("consume", env, tmp_path / "consume.log").start()
        try:
            await proc.wait_ready(60)
            await produce(kafka_bootstrap, topic, confluent_values(7, 3))
            # The registry-outage design: the batch waits (no dead letter), readiness false.
            lines = await proc.wait_log('"msg":"schema registry unavailable, retrying"', 60)
            assert expected in json.loads(lines[0])["error"]
            await proc.wait_health(
                lambda h: h is not None and h[0] == 503 and h[1]["registry"] is False,
                30,
                "unready for want of its registry",
            )
            assert await count_events(migrated_db_url) == 0
            assert await count_dead(migrated_db_url) == 0
            assert "wrong-registry-pw" not in proc.log_text()
            assert proc.proc is not None and proc.proc.poll() is None
        finally:
            proc.stop()
