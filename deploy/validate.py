#!/usr/bin/env python3
"""Validate the deploy files against their published schemas, offline (`make lint` runs it).

    validate.py                  # deploy/k8s/**/*.yaml and deploy/compose.yaml
    validate.py k8s FILE...      # Kubernetes manifests
    validate.py compose FILE...  # Compose files
    validate.py provision        # cache the Compose schema (once; `make setup` runs it)

Kubernetes manifests: every resource against the OpenAPI-derived schemas that the
kubernetes-validate package ships (no cluster, no network), in strict mode (an unknown field is
an error), for the oldest and the newest Kubernetes release the manifests are meant for. A
kind or apiVersion without a schema in a release is an error too.

Compose files: against the Compose Specification's JSON schema as the Go module
github.com/compose-spec/compose-go/v2 (what `docker compose` loads files with) ships it. It is
fetched once with `go mod download` (the Go module proxy, checked against the Go checksum
database), compared with the digest pinned here, and cached under ~/.cache/course-audit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import yaml

HERE = Path(__file__).resolve().parent
K8S_DIR = HERE / "k8s"
COMPOSE_FILE = HERE / "compose.yaml"

#: The oldest release the manifests support (the PodDisruptionBudgets' unhealthyPodEvictionPolicy
#: is on by default from 1.27) and the newest one kubernetes-validate knows.
K8S_VERSIONS = ("1.27", "1.37")

COMPOSE_GO_MODULE = "github.com/compose-spec/compose-go/v2"
COMPOSE_GO_VERSION = "v2.16.2"
#: sha256 of schema/compose-spec.json in that module version.
COMPOSE_SCHEMA_SHA256 = "f266dcbb043229405d7cedd5aec918f9102c2b3d5e3850808fdd8edd564a43ff"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "course-audit"
COMPOSE_SCHEMA = CACHE / f"compose-spec-{COMPOSE_GO_VERSION}.json"


class ValidateError(RuntimeError):
    """The validation could not run (as opposed to a file found invalid)."""


def log(msg: str) -> None:
    print(f"[validate] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- Kubernetes


def k8s_errors(resource: Any, versions: Sequence[str] = K8S_VERSIONS) -> list[str]:
    """What is wrong with one Kubernetes resource, for each release in `versions`."""
    import kubernetes_validate.utils as kv  # the test extras; ships the schemas

    if not isinstance(resource, dict) or not {"apiVersion", "kind"} <= resource.keys():
        return ["not a Kubernetes resource (a mapping with apiVersion and kind)"]
    errors = []
    for version in versions:
        try:
            kv.validate(resource, version, strict=True)
        except kv.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path) or "(top level)"
            errors.append(f"Kubernetes {version}: {path}: {exc.message}")
        except (kv.SchemaNotFoundError, kv.VersionNotSupportedError) as exc:
            errors.append(f"Kubernetes {version}: {exc.message}")
    return errors


def check_k8s(paths: Iterable[Path]) -> tuple[int, list[str]]:
    """(resources checked, one line per problem) for the manifests in `paths`."""
    checked, problems = 0, []
    for path in paths:
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except (OSError, yaml.YAMLError) as exc:
            problems.append(f"{path}: unreadable: {' '.join(str(exc).split())}")
            continue
        for doc in docs:
            checked += 1
            name = _resource_name(doc)
            problems += [f"{path}: {name}: {e}" for e in k8s_errors(doc)]
    return checked, problems


def _resource_name(doc: Any) -> str:
    if isinstance(doc, dict):
        meta = doc.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        return f"{doc.get('kind', '?')}/{name or '?'}"
    return "?"


def k8s_files() -> list[Path]:
    return sorted(K8S_DIR.rglob("*.yaml"))


# ---------------------------------------------------------------- Compose


def provision_compose_schema() -> Path:
    """The cached Compose schema, fetched with `go mod download` when missing."""
    if COMPOSE_SCHEMA.exists() and _sha256(COMPOSE_SCHEMA) == COMPOSE_SCHEMA_SHA256:
        return COMPOSE_SCHEMA
    go = shutil.which("go")
    if go is None:
        raise ValidateError(
            f"the Compose schema is not cached at {COMPOSE_SCHEMA} and `go` is not installed"
            f" to fetch it ({COMPOSE_GO_MODULE}@{COMPOSE_GO_VERSION})"
        )
    module = f"{COMPOSE_GO_MODULE}@{COMPOSE_GO_VERSION}"
    log(f"fetching the Compose schema from {module} into {CACHE}")
    done = subprocess.run(
        [go, "mod", "download", "-json", module], capture_output=True, text=True, check=False
    )
    try:
        info = json.loads(done.stdout)
    except json.JSONDecodeError:
        info = {}
    if done.returncode != 0 or "Dir" not in info:
        reason = info.get("Error") or done.stderr.strip() or f"exit status {done.returncode}"
        raise ValidateError(f"`go mod download {module}` failed: {reason}")
    source = Path(info["Dir"]) / "schema" / "compose-spec.json"
    digest = _sha256(source)
    if digest != COMPOSE_SCHEMA_SHA256:
        raise ValidateError(f"{source} has sha256 {digest}, not the pinned {COMPOSE_SCHEMA_SHA256}")
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = COMPOSE_SCHEMA.with_suffix(".partial")
    shutil.copyfile(source, partial)
    partial.replace(COMPOSE_SCHEMA)
    return COMPOSE_SCHEMA


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compose_schema() -> dict[str, Any]:
    """The cached Compose schema; never reaches the network."""
    if not COMPOSE_SCHEMA.exists():
        raise ValidateError(
            f"the Compose schema is not cached at {COMPOSE_SCHEMA}: run `make setup` once"
            " (it fetches it from the Go module proxy)"
        )
    schema: dict[str, Any] = json.loads(COMPOSE_SCHEMA.read_text())
    return schema


def compose_errors(document: Any, schema: dict[str, Any]) -> list[str]:
    """What is wrong with one Compose file's content (parsed YAML, merge keys resolved)."""
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.path)))
    return [f"{e.json_path}: {e.message}" for e in errors]


def check_compose(paths: Iterable[Path]) -> tuple[int, list[str]]:
    """(files checked, one line per problem) for the Compose files in `paths`."""
    schema = compose_schema()
    checked, problems = 0, []
    for path in paths:
        try:
            document = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            problems.append(f"{path}: unreadable: {' '.join(str(exc).split())}")
            continue
        checked += 1
        problems += [f"{path}: {e}" for e in compose_errors(document, schema)]
    return checked, problems


# ---------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args.pop(0) if args else "all"
    try:
        if command == "provision":
            log(f"Compose schema: {provision_compose_schema()}")
            return 0
        results = []
        if command in ("all", "k8s"):
            files = [Path(a) for a in args] if command == "k8s" else k8s_files()
            n, problems = check_k8s(files)
            versions = " and ".join(K8S_VERSIONS)
            results.append((f"{n} Kubernetes resources (strict, Kubernetes {versions})", problems))
        if command in ("all", "compose"):
            if command == "all":
                provision_compose_schema()  # a no-op once cached
            files = [Path(a) for a in args] if command == "compose" else [COMPOSE_FILE]
            n, problems = check_compose(files)
            what = f"{n} Compose file(s) (compose-spec of compose-go {COMPOSE_GO_VERSION})"
            results.append((what, problems))
        if not results:
            log(f"unknown command {command!r}: use k8s, compose or provision (or nothing)")
            return 2
    except ValidateError as exc:
        log(f"cannot validate: {exc}")
        return 2
    failed = False
    for what, problems in results:
        for problem in problems:
            print(f"INVALID {problem}", file=sys.stderr)
        if problems:
            failed = True
            log(f"{what}: {len(problems)} problem(s)")
        else:
            log(f"{what}: valid")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
