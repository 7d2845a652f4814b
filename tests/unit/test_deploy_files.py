"""deploy/ agrees with the code: settings it names, command lines it runs, ports and probes.

No container engine or cluster is needed: the files are read as text (and, for structure,
parsed with PyYAML, which the test extras bring in through openapi-spec-validator).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from course_audit import __version__
from course_audit.cli.parser import build_parser
from course_audit.config import Settings
from course_audit.runtime.health import Health
from course_audit.runtime.metrics import Metrics
from course_audit.runtime.web import build_app

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
README = DEPLOY / "README.md"
IMAGE = "course-audit"
POSTGRES_INIT = DEPLOY / "postgres-init"
#: `${NAME:-default}` / `${NAME-default}` in the compose file: read by docker compose itself.
COMPOSE_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")

#: The database URL each role is given, and only that one (docs/operations.md#database-roles).
ROLE_URLS = {
    "migrate": "AUDIT_DATABASE_URL",
    "consume": "AUDIT_CONSUMER_DATABASE_URL",
    "serve": "AUDIT_API_DATABASE_URL",
}


class _Recording(Mapping[str, str]):
    """An empty environment that notes every variable the settings reader asks for."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _settings_variables() -> set[str]:
    env = _Recording()
    Settings.from_env(env)
    return env.asked


def _deploy_files() -> list[Path]:
    # deploy/local/ is excluded: its scripts use variables of their own (AUDIT_LOCAL_*).
    return [DOCKERFILE, COMPOSE, README, *sorted(K8S.rglob("*.yaml"))]


def _yaml() -> Any:
    import yaml  # a test dependency (pyproject's test extras)

    return yaml


def _k8s_documents() -> list[dict[str, Any]]:
    yaml = _yaml()
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                doc["__file__"] = str(path.relative_to(DEPLOY))
                docs.append(doc)
    return docs


def _of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def _compose_variables() -> set[str]:
    return {m.group(1) for m in COMPOSE_VARIABLE.finditer(COMPOSE.read_text())}


def _interpolated(value: Any) -> Any:
    """`value` as docker compose reads it with none of its variables set: the defaults."""
    if isinstance(value, str):
        return COMPOSE_VARIABLE.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, dict):
        return {k: _interpolated(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolated(v) for v in value]
    return value


def _compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _interpolated(
        _yaml().safe_load(COMPOSE.read_text())["services"]
    )
    return services


def _ours(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The compose services that run the course-audit image."""
    return {
        name: svc for name, svc in services.items() if svc.get("image", "").split(":")[0] == IMAGE
    }


def _routes() -> set[str]:
    app = build_app(Settings(), Health(), Metrics())
    return {resource.canonical for resource in app.router.resources()}


def _assert_parses(argv: list[str], where: str) -> None:
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `course-audit {shlex.join(argv)}` is not a valid command line")


def _dockerfile_instruction(name: str) -> str:
    lines = DOCKERFILE.read_text().splitlines()
    found = [line.split(None, 1)[1] for line in lines if line.startswith(name + " ")]
    assert len(found) == 1, f"expected one {name} in the Dockerfile, found {found}"
    return found[0]


# ---------------------------------------------------------------- plain text


def test_every_audit_variable_named_in_deploy_is_a_setting() -> None:
    known = _settings_variables()
    assert "AUDIT_DATABASE_URL" in known  # the recorder itself works
    named: dict[str, set[str]] = {}
    for path in _deploy_files():
        for name in re.findall(r"\bAUDIT_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()):
            named.setdefault(name, set()).add(str(path.relative_to(DEPLOY)))
    # Guards against a vacuous pass (e.g. the files moved): the core settings must be there.
    assert {"AUDIT_DATABASE_URL", "AUDIT_KAFKA_BOOTSTRAP_SERVERS", "AUDIT_HTTP_PORT"} <= set(named)
    # The compose file's own variables (images) are docker compose's, not the service's: they
    # must not be mistaken for settings, and deploy/README.md names each.
    compose_variables = _compose_variables()
    assert {"AUDIT_IMAGE", "AUDIT_KAFKA_IMAGE", "AUDIT_POSTGRES_IMAGE"} <= compose_variables
    assert not compose_variables & known
    assert all(f"`{name}`" in README.read_text() for name in compose_variables)
    unknown = {
        name: sorted(files)
        for name, files in named.items()
        if name not in known and name not in compose_variables
    }
    assert not unknown, f"not read by config.py: {unknown}"


def test_image_entrypoint_and_default_command() -> None:
    entrypoint = json.loads(_dockerfile_instruction("ENTRYPOINT"))
    cmd = json.loads(_dockerfile_instruction("CMD"))
    assert entrypoint == [IMAGE]
    _assert_parses(cmd, "Dockerfile CMD")
    assert cmd == ["run"]


def test_image_exposes_the_default_port_and_checks_liveness() -> None:
    assert _dockerfile_instruction("EXPOSE").strip() == str(Settings().http_port)
    text = DOCKERFILE.read_text()
    healthcheck = text[text.index("HEALTHCHECK") :].split("\n\n", 1)[0]
    paths = re.findall(r"/health/\w+", healthcheck)
    assert paths == ["/health/live"]
    assert paths[0] in _routes()


def test_image_installs_the_wheel_not_the_source_tree() -> None:
    # The schemas are package data now: a regular (non-editable) install carries them, and
    # the image holds the virtualenv alone, no checkout.
    text = DOCKERFILE.read_text()
    assert not re.search(r"pip install .*-e\b", text)
    assert not re.search(r"^COPY (schemas|service)/", text, re.M)
    assert re.search(r"pip install --no-index --find-links /src/wheels course-audit\b", text)
    assert re.search(r"^COPY --from=build /opt/venv /opt/venv$", text, re.M)
    assert _dockerfile_instruction("USER").strip() == "10001:10001"


def test_image_tags_in_the_docs_are_the_package_version() -> None:
    tags = re.findall(r"\bcourse-audit:([0-9][\w.+-]*)", README.read_text())
    assert tags, "deploy/README.md names no course-audit:VERSION tag"
    assert set(tags) == {__version__}


def test_readme_command_lines_parse() -> None:
    text = README.read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    checked = 0
    for line in "\n".join(blocks).splitlines():
        line = line.split("#", 1)[0].split("<", 1)[0].strip()
        direct = re.search(r"(?:^|\s)(?:\S*/)?course-audit\s+(.+)$", line)
        one_off = re.search(r"compose .* run --rm (?:-T )?[\w-]+ (.+)$", line)
        for match in (direct, one_off):
            if match:
                _assert_parses(shlex.split(match.group(1)), "deploy/README.md")
                checked += 1
    assert checked >= 3


# ---------------------------------------------------------------- compose


def test_compose_roles_and_command_lines() -> None:
    ours = _ours(_compose_services())
    commands = {}
    for name, svc in ours.items():
        _assert_parses(svc["command"], f"compose service {name}")
        commands[name] = svc["command"][0]
    assert sorted(commands.values()) == ["consume", "migrate", "serve"]


def test_compose_settings_are_valid_and_ports_match() -> None:
    ours = _ours(_compose_services())
    for name, svc in ours.items():
        env = {k: str(v) for k, v in svc["environment"].items()}
        settings = Settings.from_env(env)  # raises ConfigError on a bad value
        # Each role with its own database URL, and only that one.
        urls = {k for k in env if k.endswith("DATABASE_URL")}
        assert urls == {ROLE_URLS[svc["command"][0]]}, name
        assert env[ROLE_URLS[svc["command"][0]]].startswith("postgresql://"), name
        assert settings.migrate_on_start is False, name
        if svc["command"] == ["serve"]:
            published = [str(p).rsplit(":", 1)[-1] for p in svc.get("ports", [])]
            assert published == [str(settings.http_port)], name
        if svc["command"] == ["consume"]:
            # `--scale consumer=N` needs no fixed name and no published host port.
            assert "container_name" not in svc and "ports" not in svc


def test_compose_start_order() -> None:
    services = _compose_services()
    by_command = {svc["command"][0]: name for name, svc in _ours(services).items()}

    def conditions(svc: dict[str, Any]) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in svc["depends_on"].items()}

    for role in ("consume", "serve"):
        deps = conditions(services[by_command[role]])
        assert deps[by_command["migrate"]] == "service_completed_successfully", role
        for dep in deps:
            assert dep in services, f"{role} depends on unknown service {dep}"
    assert "kafka" in services and services["kafka"]["image"].startswith("apache/kafka:")
    kafka_env = services["kafka"]["environment"]
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert str(kafka_env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"]) == "0"
    assert "healthcheck" in services["postgres"]


def test_compose_images_are_overridable_with_official_defaults() -> None:
    raw = _yaml().safe_load(COMPOSE.read_text())["services"]
    expected = {
        "kafka": "${AUDIT_KAFKA_IMAGE:-apache/kafka:4.1.1}",
        "kafka-init": "${AUDIT_KAFKA_IMAGE:-apache/kafka:4.1.1}",
        "postgres": "${AUDIT_POSTGRES_IMAGE:-postgres:16}",
    }
    for name, image in expected.items():
        assert raw[name]["image"] == image, name
    for name in _ours(_compose_services()):
        assert raw[name]["image"] == "${AUDIT_IMAGE:-course-audit:0.1.0}", name


def _url_login(url: str) -> tuple[str, str]:
    match = re.fullmatch(r"postgresql://([^:@/]+):([^@/]+)@postgres:5432/course_audit", url)
    assert match, url
    return match.group(1), match.group(2)


def test_compose_logins_are_made_by_the_postgres_init_script() -> None:
    services = _compose_services()
    postgres = services["postgres"]
    assert "./postgres-init:/docker-entrypoint-initdb.d:ro" in postgres["volumes"]
    (script,) = POSTGRES_INIT.glob("*.sql")
    sql = " ".join(script.read_text().split())
    by_role = {svc["command"][0]: svc for svc in _ours(services).values()}
    owner, owner_password = _url_login(by_role["migrate"]["environment"]["AUDIT_DATABASE_URL"])
    # The owner is not the server's superuser (the image makes POSTGRES_USER one).
    assert postgres["environment"]["POSTGRES_USER"] != owner
    assert f"CREATE ROLE {owner} LOGIN PASSWORD '{owner_password}';" in sql
    assert f"ALTER DATABASE %I OWNER TO {owner}" in sql
    # Migration 0004 would need CREATEROLE to make the groups: the script makes them first.
    assert "CREATE ROLE course_audit_writer NOLOGIN;" in sql
    assert "CREATE ROLE course_audit_reader NOLOGIN;" in sql
    for role, group in (("consume", "course_audit_writer"), ("serve", "course_audit_reader")):
        env = by_role[role]["environment"]
        user, password = _url_login(env[ROLE_URLS[role]])
        assert user != owner
        assert f"CREATE ROLE {user} LOGIN PASSWORD '{password}' IN ROLE {group};" in sql, role
    # Healthy only after the init scripts: the image's temporary server has no TCP listener.
    healthcheck = " ".join(postgres["healthcheck"]["test"])
    assert "pg_isready -h 127.0.0.1" in healthcheck and f"-U {owner}" in healthcheck


# ---------------------------------------------------------------- kubernetes


def test_k8s_manifests_are_namespace_less_and_named() -> None:
    docs = _k8s_documents()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("PodDisruptionBudget") == 2 and kinds.count("Deployment") == 2
    assert {"ConfigMap", "Secret", "Job", "Service"} <= set(kinds)
    for doc in docs:
        assert doc.get("apiVersion") and doc["metadata"].get("name"), doc["__file__"]
        assert "namespace" not in doc["metadata"], doc["__file__"]


def test_k8s_settings_are_valid_and_each_pod_gets_only_its_url() -> None:
    docs = _k8s_documents()
    (config,) = _of_kind(docs, "ConfigMap")
    (secret,) = _of_kind(docs, "Secret")
    assert not [k for k in config["data"] if k.endswith("DATABASE_URL")]
    # Set by the Deployments themselves (their pods cannot migrate), not shared.
    assert "AUDIT_MIGRATE_ON_START" not in config["data"]
    # The template must not be applied with `kubectl apply -f deploy/k8s/` (no recursion).
    assert Path(secret["__file__"]).parent != Path("k8s")
    assert set(secret["stringData"]) == set(ROLE_URLS.values())
    assert all("PLACEHOLDER" in url for url in secret["stringData"].values())
    assert all(isinstance(v, str) for v in config["data"].values())

    roles = set()
    for name, pod in _pod_specs(docs):
        (container,) = pod["containers"]
        role = container["args"][0]
        roles.add(role)
        assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
        secret_keys, env = set(), dict(config["data"])
        for var in container["env"]:
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref is None:
                env[var["name"]] = var["value"]
                continue
            assert ref["name"] == secret["metadata"]["name"], name
            assert ref["key"] == var["name"], name
            secret_keys.add(ref["key"])
            env[var["name"]] = secret["stringData"][ref["key"]]
        assert secret_keys == {ROLE_URLS[role]}, name
        settings = Settings.from_env(env)  # raises ConfigError on a bad value
        if role != "migrate":
            # Without the owner's URL a pod must not try to migrate at start-up.
            assert settings.migrate_on_start is False, name
    assert roles == set(ROLE_URLS)


def test_k8s_pods_run_unprivileged() -> None:
    user = _dockerfile_instruction("USER").strip()
    for name, pod in _pod_specs(_k8s_documents()):
        assert pod["automountServiceAccountToken"] is False, name
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert f"{security['runAsUser']}:{security['runAsGroup']}" == user, name
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod["containers"]:
            own = container["securityContext"]
            assert own["allowPrivilegeEscalation"] is False, name
            assert own["readOnlyRootFilesystem"] is True, name
            assert own["capabilities"] == {"drop": ["ALL"]}, name
            assert container["resources"]["requests"], name
            assert container["resources"]["limits"]["memory"], name
            # The one writable place is a size-limited scratch volume.
            scratch = {v["name"]: v for v in pod["volumes"]}
            for mount in container.get("volumeMounts", []):
                assert scratch[mount["name"]]["emptyDir"]["sizeLimit"], name


def _allowed_disruptions(spec: dict[str, Any], replicas: int) -> int:
    """Evictions a budget allows with `replicas` healthy pods (integer budgets only)."""
    if "maxUnavailable" in spec:
        return int(spec["maxUnavailable"])
    return replicas - int(spec["minAvailable"])


def test_k8s_disruption_budgets_never_block_a_drain() -> None:
    docs = _k8s_documents()
    deployments = {d["metadata"]["name"]: d for d in _of_kind(docs, "Deployment")}
    for budget in _of_kind(docs, "PodDisruptionBudget"):
        spec = budget["spec"]
        # A pod that is not ready can always be evicted: an unready pod never holds a node.
        assert spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow", budget["metadata"]["name"]
        (deployment,) = [
            d
            for d in deployments.values()
            if spec["selector"]["matchLabels"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        # At the replica count used, and scaled down to one, a drain can evict a pod.
        for replicas in {deployment["spec"]["replicas"], 1}:
            assert _allowed_disruptions(spec, replicas) >= 1, (budget["metadata"]["name"], replicas)


def test_k8s_command_lines_ports_and_probes() -> None:
    docs = _k8s_documents()
    (config,) = _of_kind(docs, "ConfigMap")
    port = int(config["data"].get("AUDIT_HTTP_PORT", Settings().http_port))
    routes = _routes()
    roles = {}
    for name, pod in _pod_specs(docs):
        (container,) = pod["containers"]
        assert container["image"].rsplit("/", 1)[-1].split(":")[0] == IMAGE, name
        assert "command" not in container, f"{name}: keep the image's ENTRYPOINT"
        _assert_parses(container["args"], name)
        roles[name] = container["args"][0]
        if container["args"][0] == "migrate":
            continue
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": port}, name
        # Liveness must not follow the database: an outage would only restart pods.
        live, ready = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
        assert (live["path"], ready["path"]) == ("/health/live", "/health/ready"), name
        assert {live["path"], ready["path"]} <= routes
        assert live["port"] in ("http", port) and ready["port"] in ("http", port), name
        assert container["resources"]["requests"] and container["resources"]["limits"], name
    assert sorted(roles.values()) == ["consume", "migrate", "serve"]


def test_k8s_selectors_match_pods() -> None:
    docs = _k8s_documents()
    deployments = {d["metadata"]["name"]: d for d in _of_kind(docs, "Deployment")}

    def selected(selector: dict[str, str]) -> list[str]:
        return [
            name
            for name, d in deployments.items()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]

    for name, dep in deployments.items():
        assert selected(dep["spec"]["selector"]["matchLabels"]) == [name]
    # One budget per Deployment, each selecting exactly its pods.
    pdbs = _of_kind(docs, "PodDisruptionBudget")
    budgets = [selected(p["spec"]["selector"]["matchLabels"]) for p in pdbs]
    assert sorted(budgets) == sorted([name] for name in deployments)

    (service,) = _of_kind(docs, "Service")
    (api_name,) = selected(service["spec"]["selector"])
    api = deployments[api_name]
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["serve"]
    names_and_numbers = {p["name"] for p in container["ports"]} | {
        p["containerPort"] for p in container["ports"]
    }
    assert service["spec"]["ports"][0]["targetPort"] in names_and_numbers
    assert api["spec"]["replicas"] >= 2
