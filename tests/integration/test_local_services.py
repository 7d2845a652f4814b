"""The local service scripts themselves (regressions found while running them)."""

from __future__ import annotations

from pathlib import Path

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
