#!/usr/bin/env python3
"""Start and stop a local Apache Kafka broker and PostgreSQL server without Docker.

Both run as plain processes on free loopback ports with their data and logs in one
state directory. Used by `make services`, `make run` and the test fixtures.

A port found free can be taken by another process before ours binds it: a start that fails
for that reason is retried on new ports (up to PORT_ATTEMPTS times), never given up on.

    services.py up   --state-dir DIR [--env-file FILE]   # idempotent: reuses running ones
    services.py down --state-dir DIR                      # stops what `up` started, by pid
    services.py status --state-dir DIR

`start_secured_kafka` starts a broker of its own with SASL_SSL (SCRAM, PLAIN) and SSL (mutual
TLS) listeners too, for the secured-Kafka tests.

Kafka comes from the official org.apache.kafka jars resolved by Maven (see
`deploy/local/kafka/pom.xml`, cached under ~/.cache/course-audit); PostgreSQL from the
machine's server binaries (Debian's `postgresql` package).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import glob
import hashlib
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import NamedTuple

KAFKA_VERSION = "4.1.1"
HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "course-audit"
KAFKA_LIBS = CACHE / f"kafka-{KAFKA_VERSION}" / "libs"
KAFKA_HEAP = os.environ.get("AUDIT_LOCAL_KAFKA_HEAP", "-Xms256m -Xmx768m")
DB_NAME = "course_audit"
#: Starts tried (each on new ports) before a port collision is an error.
PORT_ATTEMPTS = 5
#: What a server logs when the port it was given is taken (Kafka and PostgreSQL alike).
PORT_TAKEN = "Address already in use"


class ServiceError(RuntimeError):
    pass


class PortTaken(ServiceError):
    """A port picked as free was taken by someone else before the server could bind it."""


def log(msg: str) -> None:
    print(f"[services] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A loopback port free at this moment (it may be taken before it is used: see PortTaken)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports free at this moment (held open together while picked,
    so two listeners of one server never get the same port)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            socks.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); check its state.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def read_pid(path: Path) -> int | None:
    """The live pid in a pid file (first line, as in postmaster.pid), else None."""
    try:
        pid = int(path.read_text().split("\n", 1)[0].strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _logged_since(path: Path, offset: int) -> str:
    """What was appended to a log file after `offset` (empty if there is no such file)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def wait_port(port: int, deadline: float, what: str, pid: int | None = None) -> None:
    while time.monotonic() < deadline:
        if pid is not None and not pid_alive(pid):
            raise ServiceError(f"{what} exited during start-up")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise ServiceError(f"{what} did not open port {port} in time")


# ---------------------------------------------------------------- Kafka


def provision_kafka() -> None:
    """Resolve the Kafka jars once; later starts reuse the cache."""
    pom = HERE / "kafka" / "pom.xml"
    marker = KAFKA_LIBS / ".complete"
    stamp = hashlib.sha256(pom.read_bytes()).hexdigest()
    if marker.exists() and marker.read_text() == stamp:
        return
    if shutil.which("mvn") is None:
        raise ServiceError("mvn (Apache Maven) is required to fetch the Kafka jars")
    log(f"resolving Apache Kafka {KAFKA_VERSION} jars with Maven into {KAFKA_LIBS}")
    if KAFKA_LIBS.exists():
        shutil.rmtree(KAFKA_LIBS)
    KAFKA_LIBS.mkdir(parents=True)
    subprocess.run(
        [
            "mvn", "-q", "-B", "-f", str(HERE / "kafka" / "pom.xml"),
            f"-Dkafka.version={KAFKA_VERSION}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={KAFKA_LIBS}", "-DincludeScope=runtime",
        ],
        check=True,
    )  # fmt: skip
    marker.write_text(stamp)


def kafka_metadata_ok(port: int) -> bool:
    """Send a Kafka Metadata request (v4, all topics) and check a broker is listed."""
    api_key, version, corr = 3, 4, 7
    client = b"course-audit-probe"
    # Header v1 (api key, version, correlation id, client id); body v4: all topics, no auto-create.
    body = struct.pack(">hhih", api_key, version, corr, len(client)) + client
    body += struct.pack(">i", -1) + b"\x00"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(struct.pack(">i", len(body)) + body)
            head = _recv_exact(s, 4)
            size = struct.unpack(">i", head)[0]
            resp = _recv_exact(s, size)
    except OSError:
        return False
    if len(resp) < 12 or struct.unpack(">i", resp[:4])[0] != corr:
        return False
    # v4 response: correlation_id, throttle_time_ms, brokers array length
    brokers = struct.unpack(">i", resp[8:12])[0]
    return brokers >= 1


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return buf


def new_cluster_id() -> str:
    """A random KRaft cluster id (22 characters of unpadded base64url)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def format_storage(
    jvm: list[str], cluster_id: str, props: Path, scram: tuple[str, ...] = ()
) -> None:
    """Format the KRaft log directories of `props` for `cluster_id`, with SCRAM credentials
    (`SCRAM-SHA-512=[name=...,password=...]`): KRaft stores them in its metadata log."""
    # "--cluster-id=ID": one in 32 random ids starts with "-", which a separate argument
    # would make look like an option to the tool's parser.
    fmt = subprocess.run(
        [*jvm, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
         f"--config={props}", *(f"--add-scram={entry}" for entry in scram)],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    if fmt.returncode != 0:
        raise ServiceError(f"kafka storage format failed: {fmt.stderr.strip() or fmt.stdout}")


def kafka_jvm(log_config: Path) -> list[str]:
    """The java command line prefix for Kafka's classes, with a modest heap."""
    java = shutil.which("java")
    if java is None:
        raise ServiceError("java (17+) is required to run the local Kafka broker")
    return [java, *KAFKA_HEAP.split(), "-XX:+UseG1GC", "-XX:TieredStopAtLevel=1",
            f"-Dlog4j2.configurationFile={log_config}", "-Djava.awt.headless=true",
            "-cp", str(KAFKA_LIBS / "*")]  # fmt: skip


def start_kafka(state: Path) -> str:
    kdir = state / "kafka"
    pid_file = kdir / "pid"
    port_file = kdir / "port"
    pid = read_pid(pid_file)
    if pid is not None and port_file.exists():
        port = int(port_file.read_text())
        if kafka_metadata_ok(port):
            log(f"Kafka already running (pid {pid}, port {port})")
            return f"127.0.0.1:{port}"
    provision_kafka()
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            return _start_kafka_on(kdir, *free_ports(2))
        except PortTaken as exc:
            log(f"{exc}; starting again on new ports (attempt {attempt} of {PORT_ATTEMPTS})")
    raise ServiceError(f"Kafka: a port was taken on each of {PORT_ATTEMPTS} attempts")


class Secured(NamedTuple):
    """What a broker with a SASL_SSL and an SSL listener needs, beside its PLAINTEXT one.

    `keystore`: a PEM file with the broker's private key (PKCS#8, unencrypted) and then its
    certificate chain; `truststore`: PEM CA certificates that clients' certificates must
    chain to (the SSL listener requires one: mutual TLS). SASL_SSL takes SCRAM-SHA-256 and
    SCRAM-SHA-512 for every (user, password) of `scram_users` and PLAIN for `plain_users`.
    """

    keystore: Path
    truststore: Path
    scram_users: tuple[tuple[str, str], ...] = ()
    plain_users: tuple[tuple[str, str], ...] = ()

    def properties(self) -> list[str]:
        plain = " ".join(f'user_{name}="{password}"' for name, password in self.plain_users)
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        return [
            "sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512,PLAIN",
            f"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram}",
            f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}",
            "listener.name.sasl_ssl.plain.sasl.jaas.config="
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain};",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={self.keystore}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.truststore}",
            "listener.name.ssl.ssl.client.auth=required",
        ]

    def scram(self) -> tuple[str, ...]:
        return tuple(
            f"{mechanism}=[name={name},password={password}]"
            for name, password in self.scram_users
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512")
        )


def start_secured_kafka(kdir: Path, secured: Secured) -> dict[str, str]:
    """Start a new broker (fresh data in `kdir`) with PLAINTEXT, SASL_SSL and SSL listeners on
    free ports; return each listener's `127.0.0.1:port`. Stop it with `stop_kafka(kdir)`."""
    provision_kafka()
    for attempt in range(1, PORT_ATTEMPTS + 1):
        broker, controller, sasl_ssl, ssl = free_ports(4)
        ports = {"SASL_SSL": sasl_ssl, "SSL": ssl}
        try:
            plaintext = _start_kafka_on(kdir, broker, controller, secured, ports)
        except PortTaken as exc:
            log(f"{exc}; starting again on new ports (attempt {attempt} of {PORT_ATTEMPTS})")
            continue
        return {"PLAINTEXT": plaintext, **{k: f"127.0.0.1:{p}" for k, p in ports.items()}}
    raise ServiceError(f"Kafka: a port was taken on each of {PORT_ATTEMPTS} attempts")


def _start_kafka_on(
    kdir: Path,
    port: int,
    cport: int,
    secured: Secured | None = None,
    secured_ports: dict[str, int] | None = None,
) -> str:
    """Start a new broker (fresh data) on these ports; PortTaken if one was not free."""
    if kdir.exists():
        shutil.rmtree(kdir)
    (kdir / "data").mkdir(parents=True)
    extra = dict(secured_ports or {}) if secured is not None else {}
    listeners = ",".join(f"{name}://127.0.0.1:{p}" for name, p in extra.items())
    protocols = "".join(f",{name}:{name}" for name in extra)
    props = kdir / "server.properties"
    props.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{cport}",
                f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}"
                + (f",{listeners}" if listeners else ""),
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}"
                + (f",{listeners}" if listeners else ""),
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                f"listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT{protocols}",
                *(secured.properties() if secured is not None else []),
                f"log.dirs={kdir / 'data'}",
                "num.partitions=1",
                "auto.create.topics.enable=true",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=4",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                # A fresh group would otherwise wait 3 s before its first assignment.
                "group.initial.rebalance.delay.ms=0",
                "group.consumer.session.timeout.ms=10000",
                "group.consumer.min.session.timeout.ms=1000",
                "group.min.session.timeout.ms=1000",
                "log.flush.interval.messages=100000",
                "",
            ]
        )
    )
    (kdir / "log4j2.properties").write_text(
        "\n".join(
            [
                "status = error",
                "appender.file.type = File",
                "appender.file.name = file",
                f"appender.file.fileName = {kdir / 'server.log'}",
                "appender.file.layout.type = PatternLayout",
                "appender.file.layout.pattern = [%d] %p %m (%c)%n",
                "rootLogger.level = INFO",
                "rootLogger.appenderRef.file.ref = file",
                "logger.kafka.name = kafka",
                "logger.kafka.level = WARN",
                "logger.apache.name = org.apache.kafka",
                "logger.apache.level = WARN",
                "",
            ]
        )
    )
    jvm = kafka_jvm(kdir / "log4j2.properties")
    format_storage(jvm, new_cluster_id(), props, secured.scram() if secured else ())
    with open(kdir / "stdout.log", "ab") as out:
        proc = subprocess.Popen(
            [*jvm, "kafka.Kafka", str(props)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    (kdir / "pid").write_text(str(proc.pid))
    (kdir / "port").write_text(str(port))
    deadline = time.monotonic() + 90
    try:
        # A port taken by another listener may answer a connect: only metadata from a broker
        # counts, and the broker exiting (say, it could not bind) ends the wait.
        wait_port(port, deadline, "Kafka", proc.pid)
        while not kafka_metadata_ok(port):
            if proc.poll() is not None:
                raise ServiceError(f"Kafka exited during start-up; see {kdir}/server.log")
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"Kafka did not answer metadata requests within 90 s; see {kdir}/server.log"
                )
            time.sleep(0.2)
    except ServiceError:
        _kill_group(proc)
        logs = _logged_since(kdir / "server.log", 0) + _logged_since(kdir / "stdout.log", 0)
        if PORT_TAKEN in logs:
            raise PortTaken(f"Kafka could not bind port {port} or {cport}") from None
        raise
    log(f"Kafka {KAFKA_VERSION} up on 127.0.0.1:{port} (pid {proc.pid}, data {kdir})")
    return f"127.0.0.1:{port}"


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill a server started in a session of its own (and what it started) and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


# ----------------------------------------------------------- PostgreSQL


def pg_bindir() -> Path:
    explicit = os.environ.get("AUDIT_LOCAL_PG_BINDIR")
    if explicit:
        return Path(explicit)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    raise ServiceError(
        "PostgreSQL server binaries not found (install Debian's postgresql package, "
        "or set AUDIT_LOCAL_PG_BINDIR)"
    )


def as_pg_user(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: run it as the package's postgres user then.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _pg_ctl_start(bindir: Path, data: Path, pdir: Path, port: int) -> None:
    """Start the server on `port` (given on its command line); PortTaken if it was taken."""
    server_log = pdir / "server.log"
    offset = _log_size(server_log)
    started = subprocess.run(
        as_pg_user([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(server_log),
                    "-o", f"-p {port}", "-w", "-t", "60", "start"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=90,
    )  # fmt: skip
    if started.returncode != 0:
        if PORT_TAKEN in _logged_since(server_log, offset):
            raise PortTaken(f"PostgreSQL could not bind port {port}")
        raise ServiceError(f"PostgreSQL did not start ({started.stderr.strip()}); see {server_log}")


def _start_postgres_on_a_free_port(bindir: Path, data: Path, pdir: Path, first: int) -> int:
    """Start the server on `first`, else on new ports while the one tried was taken."""
    port = first
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            _pg_ctl_start(bindir, data, pdir, port)
        except PortTaken as exc:
            log(f"{exc}; starting again on a new port (attempt {attempt} of {PORT_ATTEMPTS})")
            port = free_port()
            continue
        (pdir / "port").write_text(str(port))
        return port
    raise ServiceError(f"PostgreSQL: the port was taken on each of {PORT_ATTEMPTS} attempts")


def _stop_cluster(data: Path, name: str) -> None:
    """Stop the cluster in `data` if it runs (fast shutdown), keeping its data."""
    if read_pid(data / "postmaster.pid") is not None:
        subprocess.run(
            as_pg_user([str(pg_bindir() / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                        "-t", "60", "stop"]),
            check=False,
            stdout=subprocess.DEVNULL,
            timeout=90,
        )  # fmt: skip
        log(f"{name} stopped")


def stop_postgres(state: Path) -> None:
    """Stop the server (fast shutdown), keeping its data for a later start."""
    _stop_cluster(state / "postgres" / "data", "PostgreSQL")


def start_postgres(state: Path) -> str:
    pdir = state / "postgres"
    data = pdir / "data"
    port_file = pdir / "port"
    bindir = pg_bindir()
    pid = read_pid(data / "postmaster.pid")
    if pid is not None and port_file.exists():
        port = int(port_file.read_text())
        log(f"PostgreSQL already running (pid {pid}, port {port})")
        return f"postgresql://postgres@127.0.0.1:{port}/{DB_NAME}"
    if (data / "PG_VERSION").exists() and port_file.exists():
        # A stopped server from an earlier start: start it again, data kept, on its own port
        # unless someone else has taken that meanwhile.
        port = _start_postgres_on_a_free_port(bindir, data, pdir, int(port_file.read_text()))
        log(f"PostgreSQL restarted on 127.0.0.1:{port} (data {data})")
        return f"postgresql://postgres@127.0.0.1:{port}/{DB_NAME}"
    if pdir.exists():
        shutil.rmtree(pdir)
    pdir.mkdir(parents=True)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(pdir, pw.pw_uid, pw.pw_gid)
        # The postgres user must be able to reach the directory.
        for parent in [state, *state.parents]:
            if parent == Path("/"):
                break
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o111)
    subprocess.run(
        as_pg_user([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                    "-E", "UTF8", "--locale=C", "--no-sync"]),
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=120,
    )  # fmt: skip
    with open(data / "postgresql.conf", "a") as conf:
        # No port here: each start passes the one it got (see _pg_ctl_start).
        conf.write(
            "\n# course-audit local test server\n"
            "listen_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{pdir}'\n"
            "max_connections = 200\nshared_buffers = 256MB\n"
            "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            "max_locks_per_transaction = 256\n"
        )
    port = _start_postgres_on_a_free_port(bindir, data, pdir, free_port())
    subprocess.run(
        as_pg_user([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                    "postgres", DB_NAME]),
        check=True,
        timeout=60,
    )  # fmt: skip
    log(f"PostgreSQL up on 127.0.0.1:{port} (data {data})")
    return f"postgresql://postgres@127.0.0.1:{port}/{DB_NAME}"


def start_standby(state: Path, primary_url: str) -> str:
    """A hot standby streaming from the local primary at `primary_url` (docs/operations.md#read-
    replicas): `pg_basebackup -R` of it into `state`/standby, started on a free port.

    The primary needs nothing added: initdb's defaults have `wal_level = replica`, WAL senders
    and a `replication` line for 127.0.0.1 in pg_hba.conf (trust, as the rest); the superuser
    `postgres` replicates. Returns the standby's URL, on the primary URL's database.
    """
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(primary_url)
    pdir = state / "standby"
    data = pdir / "data"
    bindir = pg_bindir()
    if pdir.exists():
        shutil.rmtree(pdir)
    pdir.mkdir(parents=True)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(pdir, pw.pw_uid, pw.pw_gid)
    subprocess.run(
        as_pg_user([str(bindir / "pg_basebackup"), "-h", parts.hostname or "127.0.0.1",
                    "-p", str(parts.port or 5432), "-U", parts.username or "postgres",
                    "-D", str(data), "-R", "-X", "stream", "-c", "fast", "--no-sync"]),
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=300,
    )  # fmt: skip
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(
            "\n# course-audit local standby\n"
            f"unix_socket_directories = '{pdir}'\n"
            "hot_standby = on\n"
        )
    port = _start_postgres_on_a_free_port(bindir, data, pdir, free_port())
    netloc = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    log(f"PostgreSQL standby up on 127.0.0.1:{port} (data {data})")
    return urlunsplit((parts.scheme, f"{netloc}127.0.0.1:{port}", parts.path, "", ""))


def stop_standby(state: Path) -> None:
    """Stop the standby (fast shutdown); `start_standby_again` starts it on its port."""
    _stop_cluster(state / "standby" / "data", "PostgreSQL standby")


def start_standby_again(state: Path) -> int:
    """Start a stopped standby on the port it had (another if that was taken meanwhile)."""
    pdir = state / "standby"
    port = int((pdir / "port").read_text())
    return _start_postgres_on_a_free_port(pg_bindir(), pdir / "data", pdir, port)


# ---------------------------------------------------------------- glue


def up(state: Path, env_file: Path | None) -> dict[str, str]:
    state.mkdir(parents=True, exist_ok=True)
    env = {
        "AUDIT_DATABASE_URL": start_postgres(state),
        "AUDIT_KAFKA_BOOTSTRAP_SERVERS": start_kafka(state),
    }
    if env_file is not None:
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return env


def down(state: Path) -> None:
    stop_standby(state)
    stop_postgres(state)
    stop_kafka(state / "kafka")


def stop_kafka(kdir: Path) -> None:
    """Stop the broker whose pid is in `kdir` (SIGTERM, then SIGKILL after 30 s)."""
    kpid = read_pid(kdir / "pid")
    if kpid is not None:
        os.kill(kpid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while pid_alive(kpid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(kpid):
            os.kill(kpid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while pid_alive(kpid):
                if time.monotonic() > deadline:
                    raise ServiceError(f"Kafka (pid {kpid}) still alive 30 s after SIGKILL")
                time.sleep(0.1)
        log("Kafka stopped")


def status(state: Path) -> int:
    pg = read_pid(state / "postgres" / "data" / "postmaster.pid")
    kafka = read_pid(state / "kafka" / "pid")
    print(f"postgres: {f'running pid {pg}' if pg else 'stopped'}")
    print(f"kafka: {f'running pid {kafka}' if kafka else 'stopped'}")
    return 0 if pg and kafka else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["up", "down", "status", "provision"])
    p.add_argument("--state-dir", type=Path, default=None)
    p.add_argument("--env-file", type=Path, default=None)
    args = p.parse_args()
    try:
        if args.command == "provision":
            provision_kafka()
            pg_bindir()
            return 0
        if args.state_dir is None:
            p.error("--state-dir is required")
        if args.command == "up":
            for k, v in up(args.state_dir, args.env_file).items():
                print(f"{k}={v}")
            return 0
        if args.command == "down":
            down(args.state_dir)
            return 0
        return status(args.state_dir)
    except (ServiceError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
