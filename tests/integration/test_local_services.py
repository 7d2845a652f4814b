"""The local service scripts themselves (regressions found while running them)."""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from harness import load_local_services


def test_storage_format_accepts_a_cluster_id_that_starts_with_a_dash(tmp_path: Path) -> None:
    # One random id in 32 starts with "-"; formatting once failed for those.
    services = load_local_services()
    services.provision_kafka()
    data = tmp_path / "data"
    props = tmp_path / "server.properties"
    props.write_text(
        "process.roles=broker,controller\nnode.id=1\n"
        "controller.quorum.voters=1@127.0.0.1:9999\n"
        "listeners=PLAINTEXT://127.0.0.1:9998,CONTROLLER://127.0.0.1:9999\n"
        "controller.listener.names=CONTROLLER\n"
        f"log.dirs={data}\n"
    )
    cluster_id = "-" + services.new_cluster_id()[1:]
    services.format_storage(services.kafka_jvm(tmp_path / "none.properties"), cluster_id, props)
    meta = (data / "meta.properties").read_text()
    assert f"cluster.id={cluster_id}" in meta


async def test_postgres_starts_on_another_port_when_its_port_is_taken() -> None:
    # A port found free can be taken before the server binds it: the start moves on to a
    # new port instead of failing, the first time and when a stopped server starts again.
    services = load_local_services()
    state = Path(tempfile.mkdtemp(prefix="course-audit-pg-"))  # the postgres user reaches it
    picked = services.free_port
    first = _listening()
    first_port = first.getsockname()[1]
    taken = [first_port]  # the first port it picks is one another process listens on
    services.free_port = lambda: taken.pop() if taken else picked()
    try:
        url = services.start_postgres(state)
        assert _port_of(url) != first_port
        assert "Address already in use" in (state / "postgres" / "server.log").read_text()

        services.stop_postgres(state)
        with _listening(_port_of(url)):
            again = services.start_postgres(state)
        assert _port_of(again) not in (_port_of(url), first_port)
        conn = await asyncpg.connect(again)  # the same data: the database made at first start
        try:
            assert await conn.fetchval("SELECT current_database()") == "course_audit"
        finally:
            await conn.close()
    finally:
        first.close()
        services.down(state)
        shutil.rmtree(state, ignore_errors=True)


def _listening(port: int = 0) -> socket.socket:
    sock = socket.socket()
    # A server's old port may still have connections in TIME_WAIT; they do not stop a listener.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def _port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port
