"""deploy/validate.py, the schema check `make lint` runs, refuses broken manifests and
Compose files, accepts the real ones, and needs no network to do either."""

from __future__ import annotations

import copy
import importlib.util
import socket
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_validate", DEPLOY / "validate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


validate = _load()


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    validate.provision_compose_schema()  # a no-op once `make setup` has cached it
    schema: dict[str, Any] = validate.compose_schema()
    return schema


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network use during validation: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _k8s(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if d]


def _deployment(component: str) -> dict[str, Any]:
    (deployment,) = [d for d in _k8s(f"{component}.yaml") if d["kind"] == "Deployment"]
    return deployment


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return document


# ---------------------------------------------------------------- Kubernetes


@pytest.mark.usefixtures("offline")
def test_the_real_manifests_are_valid_offline() -> None:
    files = validate.k8s_files()
    checked, problems = validate.check_k8s(files)
    assert problems == []
    # Every resource of every file (the Secret template included), not a vacuous pass.
    assert {f.name for f in files} >= {"api.yaml", "pdb.yaml", "database-secret.yaml"}
    assert checked == sum(len(_k8s(str(f.relative_to(DEPLOY / "k8s")))) for f in files) >= 8


@pytest.mark.usefixtures("offline")
def test_an_unknown_field_is_refused_in_strict_mode() -> None:
    api = _deployment("api")
    api["spec"]["template"]["spec"]["containers"][0]["imagePulPolicy"] = "Always"
    (error,) = {e.split(": ", 1)[1] for e in validate.k8s_errors(api)}
    assert "spec.template.spec.containers.0" in error
    assert "'imagePulPolicy' was unexpected" in error


@pytest.mark.usefixtures("offline")
def test_a_wrongly_typed_field_is_refused() -> None:
    consumer = _deployment("consumer")
    consumer["spec"]["replicas"] = "three"
    errors = validate.k8s_errors(consumer)
    assert [e.split(":")[0] for e in errors] == [f"Kubernetes {v}" for v in validate.K8S_VERSIONS]
    assert all("spec.replicas: 'three' is not of type 'integer'" in e for e in errors)


@pytest.mark.usefixtures("offline")
def test_a_misplaced_pdb_field_is_refused() -> None:
    budget = _k8s("pdb.yaml")[0]
    # The policy belongs in spec, not in the selector.
    budget["spec"]["selector"]["unhealthyPodEvictionPolicy"] = "AlwaysAllow"
    errors = validate.k8s_errors(budget)
    assert errors and all("spec.selector" in e and "was unexpected" in e for e in errors)


@pytest.mark.usefixtures("offline")
def test_a_removed_api_version_and_an_unknown_kind_are_refused() -> None:
    budget = _k8s("pdb.yaml")[0]
    old = {**budget, "apiVersion": "policy/v1beta1"}  # removed in Kubernetes 1.25
    assert all("Couldn't find schema" in e for e in validate.k8s_errors(old))
    assert len(validate.k8s_errors(old)) == len(validate.K8S_VERSIONS)
    typo = {**budget, "kind": "PodDisruptionBudgte"}
    typo_errors = validate.k8s_errors(typo)
    assert typo_errors and all("kind PodDisruptionBudgte" in e for e in typo_errors)
    assert validate.k8s_errors(["not", "a", "mapping"]) == [
        "not a Kubernetes resource (a mapping with apiVersion and kind)"
    ]


def test_the_command_line_fails_on_a_broken_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _k8s("migrate-job.yaml")[0]
    job["spec"]["backoffLimit"] = "six"
    broken = tmp_path / "job.yaml"
    broken.write_text(yaml.safe_dump(job))
    good = DEPLOY / "k8s" / "configmap.yaml"
    assert validate.main(["k8s", str(good), str(broken)]) == 1
    err = capsys.readouterr().err
    assert f"INVALID {broken}: Job/course-audit-migrate: Kubernetes 1.27: spec.backoffLimit" in err
    assert str(good) not in err  # only the broken file is named
    assert validate.main(["k8s", str(good)]) == 0


# ---------------------------------------------------------------- Compose


@pytest.mark.usefixtures("offline")
def test_the_real_compose_file_is_valid_offline(compose_schema: dict[str, Any]) -> None:
    document = _compose()
    assert validate.compose_errors(document, compose_schema) == []
    assert {"kafka", "postgres", "migrate", "consumer", "api"} <= set(document["services"])


@pytest.mark.usefixtures("offline")
def test_a_misspelt_compose_key_is_refused(compose_schema: dict[str, Any]) -> None:
    document = _compose()
    document["services"]["consumer"]["restrat"] = document["services"]["consumer"].pop("restart")
    (error,) = validate.compose_errors(document, compose_schema)
    assert error.startswith("$.services.consumer: ") and "'restrat' was unexpected" in error


@pytest.mark.usefixtures("offline")
def test_wrong_compose_values_are_refused(compose_schema: dict[str, Any]) -> None:
    document = _compose()
    broken = copy.deepcopy(document)
    broken["services"]["api"]["depends_on"]["postgres"]["condition"] = "service_ready"
    broken["services"]["api"]["ports"] = "8080:8080"  # a list, not a string
    errors = validate.compose_errors(broken, compose_schema)
    where = {e.split(": ", 1)[0] for e in errors}
    # Each wrong value is named (the schema may also report its enclosing service).
    assert {"$.services.api.depends_on", "$.services.api.ports"} <= where, errors
    assert where <= {"$.services.api", "$.services.api.depends_on", "$.services.api.ports"}
    assert any("'service_ready'" in e for e in errors)
    assert "$.services.api.ports: '8080:8080' is not of type 'array'" in errors
    assert validate.compose_errors(document, compose_schema) == []


def test_the_command_line_fails_on_a_broken_compose_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], compose_schema: dict[str, Any]
) -> None:
    document = _compose()
    document["volumes"] = ["postgres-data"]  # a mapping, not a list
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump(document))
    assert validate.main(["compose", str(broken)]) == 1
    assert f"INVALID {broken}: $.volumes: " in capsys.readouterr().err
    assert validate.main(["compose", str(DEPLOY / "compose.yaml")]) == 0
