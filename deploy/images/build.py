#!/usr/bin/env python3
"""Build the local container images without an image registry.

    build.py ensure [--only NAME ...] [--rebuild]   # build what is missing or stale; print tags
    build.py tags                                   # the tags, building nothing
    build.py context DIR                            # the service image's build context alone

The images (NAME: tag):

    base      course-audit-base:bookworm   Debian bookworm (minbase) with python3 and venv
    service   course-audit:VERSION         deploy/Dockerfile on `base`, from wheels made here
    postgres  course-audit-postgres:15     Debian's PostgreSQL 15, like the official image
    kafka     course-audit-kafka:4.1.1     Apache Kafka from the Maven Central jars, on a JRE

Root file systems come from Debian's apt mirror (mmdebstrap, run as root) and become images
with `docker import`; the service image is a `docker build` that downloads nothing (its
wheels are built and fetched here, on the host). Each image carries a label with a hash of
its inputs (recipe, files, the base image it is built on): `ensure` rebuilds an image only
when it is missing or that hash changed, so a second `ensure` only asks Docker.

Also a small API for the test harness: `ensure(names) -> {name: tag}`, `tags()`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PACKAGE = ROOT / "service" / "course_audit"
#: The label holding the hash of an image's inputs.
INPUTS_LABEL = "org.course-audit.inputs"
SUITE = "bookworm"
POSTGRES_MAJOR = "15"
#: Every image leaves out documentation, manual pages and translations.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
)
MERGED_USR_HOOKS = Path("/usr/share/mmdebstrap/hooks/merged-usr")
#: Held while images are built (see _lock).
LOCK = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "course-audit" / "images.lock"
)


class BuildError(RuntimeError):
    """An image could not be built; the message says which and why."""


def log(msg: str) -> None:
    print(f"[images] {msg}", file=sys.stderr, flush=True)


def package_version() -> str:
    """course_audit.__version__, read from the source (the single place it is declared)."""
    text = (PACKAGE / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    if match is None:
        raise BuildError(f"{PACKAGE / '__init__.py'}: no __version__ line")
    return match.group(1)


def load_local_services() -> ModuleType:
    """deploy/local/services.py: the Kafka version and the cache the jars are resolved into."""
    path = ROOT / "deploy" / "local" / "services.py"
    spec = importlib.util.spec_from_file_location("local_services", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- docker


def docker(
    *args: str, check: bool = True, capture: bool = True
) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            ["docker", *args], capture_output=capture, text=True, check=False, timeout=3600
        )
    except FileNotFoundError:
        raise BuildError("the docker command is not installed") from None
    if check and done.returncode != 0:
        detail = (done.stderr or "").strip() if capture else ""
        raise BuildError(f"docker {' '.join(args[:2])} failed ({done.returncode}): {detail}")
    return done


def image_label(tag: str) -> str | None:
    """The inputs label of a local image; None when there is no such image."""
    done = docker("image", "inspect", "-f", "{{json .Config.Labels}}", tag, check=False)
    if done.returncode != 0:
        return None
    labels = json.loads(done.stdout.strip() or "null") or {}
    return str(labels.get(INPUTS_LABEL, ""))


def image_id(tag: str) -> str:
    return docker("image", "inspect", "-f", "{{.Id}}", tag).stdout.strip()


def image_size(tag: str) -> int:
    return int(docker("image", "inspect", "-f", "{{.Size}}", tag).stdout.strip())


def _build_env() -> dict[str, str]:
    """The legacy builder when BuildKit's buildx plugin is missing (the Dockerfile needs no
    BuildKit feature); BuildKit otherwise."""
    env = dict(os.environ)
    if "DOCKER_BUILDKIT" not in env:
        has_buildx = (
            subprocess.run(
                ["docker", "buildx", "version"], capture_output=True, check=False
            ).returncode
            == 0
        )
        env["DOCKER_BUILDKIT"] = "1" if has_buildx else "0"
    return env


# ---------------------------------------------------------------- hashing


def _hasher(recipe: object) -> hashlib._Hash:
    h = hashlib.sha256()
    h.update(json.dumps(recipe, sort_keys=True).encode())
    return h


def _hash_files(h: hashlib._Hash, files: Iterable[Path], root: Path) -> None:
    for path in sorted(files):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())


def _tree(directory: Path) -> list[Path]:
    """The files of a source tree, without bytecode or build leftovers."""
    skip = ("__pycache__", ".egg-info")
    return [
        p
        for p in directory.rglob("*")
        if p.is_file() and not any(part.endswith(skip) for part in p.parts)
    ]


# ---------------------------------------------------------------- root file systems


def apt_sources() -> list[str]:
    """The Debian mirror lines apt uses on this host, for the suite and its updates/security."""
    lines: list[str] = []
    for path in sorted(Path("/etc/apt").glob("sources.list.d/*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.strip()
            if fields.get("enabled", "yes") == "no" or "deb" not in fields.get("types", ""):
                continue
            for uri in fields.get("uris", "").split():
                for suite in fields.get("suites", "").split():
                    if suite.split("-")[0] == SUITE:
                        lines.append(f"deb {uri} {suite} {fields.get('components', 'main')}")
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt").glob("sources.list.d/*.list")]:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) >= 4 and words[0] == "deb" and words[2].split("-")[0] == SUITE:
                lines.append(" ".join(w for w in words if not w.startswith("[")))
    debian = [line for line in lines if "debian" in line.split()[1]]
    return debian or [
        f"deb http://deb.debian.org/debian {SUITE} main",
        f"deb http://deb.debian.org/debian {SUITE}-updates main",
        f"deb http://deb.debian.org/debian-security {SUITE}-security main",
    ]


def mmdebstrap(tar: Path, packages: Sequence[str], hooks: Sequence[tuple[str, str]] = ()) -> None:
    """A minbase root file system with `packages`, as a tarball."""
    if shutil.which("mmdebstrap") is None:
        raise BuildError("mmdebstrap is required (Debian: apt-get install mmdebstrap)")
    if os.geteuid() != 0:
        raise BuildError("building a root file system needs root (mmdebstrap's root mode)")
    cmd = ["mmdebstrap", "--mode=root", "--variant=minbase", f"--include={','.join(packages)}"]
    if MERGED_USR_HOOKS.is_dir():
        # /usr merged by symlinks, as debootstrap does: otherwise apt satisfies
        # init-system-helpers' "usrmerge | usr-is-merged" with usrmerge, which brings all of
        # Perl (about 50 MB) into every image.
        cmd.append(f"--hook-dir={MERGED_USR_HOOKS}")
    cmd += [f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES]
    cmd += ["--dpkgopt=force-confold"]
    cmd += [f"--{kind}-hook={hook}" for kind, hook in hooks]
    cmd += [SUITE, str(tar), *apt_sources()]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BuildError(f"mmdebstrap failed ({done.returncode}):\n{done.stderr[-4000:]}")


def docker_import(
    tar: Path, tag: str, changes: Sequence[str], inputs: str, stop_signal: str | None = None
) -> None:
    """A root file system tarball as the image `tag`, with Dockerfile-like `changes`."""
    args = ["import"]
    for change in [*changes, f"LABEL {INPUTS_LABEL}={inputs}"]:
        args += ["--change", change]
    if stop_signal is None:
        docker(*args, str(tar), tag)
        return
    # dockerd 20.10's import takes no STOPSIGNAL: one more (empty) layer, built FROM the import.
    staged = f"{tag.split(':')[0]}-import:{inputs[:12]}"
    docker(*args, str(tar), staged)
    try:
        done = subprocess.run(
            ["docker", "build", "-t", tag, "-"],
            input=f"FROM {staged}\nSTOPSIGNAL {stop_signal}\n",
            capture_output=True, text=True, env=_build_env(), check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise BuildError(
                f"docker build of {tag} failed:\n{(done.stdout + done.stderr)[-2000:]}"
            )
    finally:
        docker("image", "rm", staged, check=False)  # the tag only: the layers stay, in `tag`


#: The trimming every root file system gets after its packages are in.
SLIM_HOOK = (
    "customize",
    'rm -rf "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old "$1"/var/log/*.log'
    ' "$1"/var/log/apt/* "$1"/usr/share/common-licenses/*',
)


# ---------------------------------------------------------------- the images


class Image(NamedTuple):
    """One image: its tag, the images it is built on, its inputs hash, its build."""

    name: str
    tag: str
    needs: tuple[str, ...]
    inputs: Callable[[], str]
    build: Callable[[str], None]


BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "tzdata")


def _rootfs_recipe(image: str, packages: Sequence[str], **more: object) -> dict[str, object]:
    """What a root file system is made of, for its inputs hash."""
    return {"image": image, "packages": list(packages), "sources": apt_sources(),
            "dpkg": DPKG_EXCLUDES, "merged_usr": MERGED_USR_HOOKS.is_dir(),
            "slim": SLIM_HOOK, **more}  # fmt: skip


def _base_inputs() -> str:
    return _hasher(_rootfs_recipe("base", BASE_PACKAGES)).hexdigest()


def _build_base(inputs: str) -> None:
    with tempfile.TemporaryDirectory(prefix="course-audit-base-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        mmdebstrap(tar, BASE_PACKAGES, [SLIM_HOOK])
        docker_import(
            tar,
            TAGS["base"],
            [
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "ENV LANG=C.UTF-8",
                'CMD ["python3"]',
            ],
            inputs,
        )


def _service_sources() -> list[Path]:
    return [ROOT / "pyproject.toml", ROOT / "README.md", *_tree(PACKAGE)]


def _service_inputs() -> str:
    h = _hasher({"image": "service", "base": image_id(TAGS["base"])})
    _hash_files(h, [ROOT / "deploy" / "Dockerfile", *_service_sources()], ROOT)
    return h.hexdigest()


def wheel_platforms() -> list[str]:
    """The manylinux tags Debian bookworm (glibc 2.36) runs, on this machine's architecture.

    pip takes --platform literally (a manylinux_2_36 wheel only), so every older glibc
    version is named too, and the legacy aliases (manylinux2014 is manylinux_2_17, ...).
    """
    arch = platform.machine()
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(36, 4, -1)]
    return [*tags, *(f"manylinux{legacy}_{arch}" for legacy in ("2014", "2010", "1"))]


def service_context(context: Path) -> Path:
    """The service image's build context: wheels/ with the course-audit wheel and the wheels
    of all its dependencies (CPython 3.11, glibc), made on this host."""
    wheels = context / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="course-audit-src-") as tmp:
        # From a copy of the sources alone: an editable install's egg-info in the checkout
        # must not decide what the wheel contains.
        source = Path(tmp)
        for path in _service_sources():
            target = source / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(wheels), str(source)])
    built = sorted(wheels.glob("course_audit-*.whl"))
    if len(built) != 1:
        raise BuildError(f"expected one course-audit wheel, found {built}")
    _run(
        [
            sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
            "--only-binary=:all:", "--implementation=cp", "--python-version=3.11",
            "--abi=cp311", *(f"--platform={tag}" for tag in wheel_platforms()),
            "--dest", str(wheels), str(built[0]),
        ]
    )  # fmt: skip
    return context


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BuildError(f"{' '.join(cmd[:4])} failed ({done.returncode}):\n{done.stderr[-4000:]}")


def _build_service(inputs: str) -> None:
    with tempfile.TemporaryDirectory(prefix="course-audit-context-") as tmp:
        context = service_context(Path(tmp))
        cmd = [
            "docker", "build", "-f", str(ROOT / "deploy" / "Dockerfile"),
            "--build-arg", f"BASE_IMAGE={TAGS['base']}",
            "--label", f"{INPUTS_LABEL}={inputs}",
            "--label", f"org.opencontainers.image.version={package_version()}",
            "-t", TAGS["service"], str(context),
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, env=_build_env(), check=False)
        if done.returncode != 0:
            raise BuildError(f"docker build failed:\n{(done.stdout + done.stderr)[-4000:]}")
    # The legacy builder leaves the build stage behind as an untagged image: drop it (the
    # Dockerfile labels that stage; only untagged images are pruned).
    docker("image", "prune", "-f", "--filter", "label=org.course-audit.stage=build", check=False)


POSTGRES_PACKAGES = (f"postgresql-{POSTGRES_MAJOR}", "ca-certificates", "tzdata")
POSTGRES_FILES = HERE / "postgres"


def _postgres_hooks(entrypoint: str) -> list[tuple[str, str]]:
    return [
        # No cluster from the package: the entrypoint makes one in PGDATA on first start.
        (
            "essential",
            'mkdir -p "$1"/etc/postgresql-common && '
            'echo "create_main_cluster = false" > "$1"/etc/postgresql-common/createcluster.conf',
        ),
        ("customize", f"upload {entrypoint} /usr/local/bin/docker-entrypoint.sh"),
        (
            "customize",
            'chmod 755 "$1"/usr/local/bin/docker-entrypoint.sh && '
            'mkdir -p "$1"/docker-entrypoint-initdb.d "$1"/var/lib/postgresql/data '
            '"$1"/var/run/postgresql && '
            'chroot "$1" chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql && '
            'chmod 3777 "$1"/var/run/postgresql && chmod 700 "$1"/var/lib/postgresql/data',
        ),
        # The JIT compiler's LLVM (and the z3 it links) is 130 MB; without llvmjit.so the
        # server runs every query without JIT (it checks for the file and carries on).
        (
            "customize",
            f'rm -f "$1"/usr/lib/postgresql/{POSTGRES_MAJOR}/lib/llvmjit* && '
            'rm -rf "$1"/usr/lib/postgresql/*/lib/bitcode "$1"/usr/lib/*-linux-gnu/libLLVM-* '
            '"$1"/usr/lib/*-linux-gnu/libz3.so*',
        ),
        SLIM_HOOK,
    ]


POSTGRES_CHANGES = (
    f"ENV PATH=/usr/lib/postgresql/{POSTGRES_MAJOR}/bin:/usr/local/sbin:/usr/local/bin"
    ":/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    "ENV PGDATA=/var/lib/postgresql/data",
    'ENTRYPOINT ["docker-entrypoint.sh"]',
    'CMD ["postgres"]',
    "EXPOSE 5432",
)
#: PostgreSQL's fast shutdown (SIGTERM would wait for every client to disconnect).
POSTGRES_STOP_SIGNAL = "SIGINT"


def _postgres_inputs() -> str:
    h = _hasher(
        _rootfs_recipe("postgres", POSTGRES_PACKAGES, hooks=_postgres_hooks("ENTRYPOINT"),
                       changes=POSTGRES_CHANGES, stop=POSTGRES_STOP_SIGNAL)
    )  # fmt: skip
    _hash_files(h, _tree(POSTGRES_FILES), HERE)
    return h.hexdigest()


def _build_postgres(inputs: str) -> None:
    hooks = _postgres_hooks(str(POSTGRES_FILES / "docker-entrypoint.sh"))
    with tempfile.TemporaryDirectory(prefix="course-audit-postgres-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        mmdebstrap(tar, POSTGRES_PACKAGES, hooks)
        docker_import(
            tar, TAGS["postgres"], POSTGRES_CHANGES, inputs, stop_signal=POSTGRES_STOP_SIGNAL
        )


KAFKA_PACKAGES = ("openjdk-17-jre-headless", "ca-certificates")
KAFKA_FILES = HERE / "kafka"
#: The Kafka tools the image has, as /opt/kafka/bin/NAME.sh: the main class each runs.
KAFKA_TOOLS = {
    "kafka-topics": "org.apache.kafka.tools.TopicCommand",
    "kafka-broker-api-versions": "org.apache.kafka.tools.BrokerApiVersionsCommand",
    "kafka-consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "kafka-storage": "kafka.tools.StorageTool",
}
KAFKA_UID = 1000


def kafka_libs() -> Path:
    """The jars of the broker and of its tools (kafka-tools), resolved once with Maven."""
    services = load_local_services()
    libs: Path = services.CACHE / f"kafka-image-{services.KAFKA_VERSION}" / "libs"
    pom = KAFKA_FILES / "pom.xml"
    marker = libs / ".complete"
    stamp = hashlib.sha256(pom.read_bytes()).hexdigest() + services.KAFKA_VERSION
    if marker.exists() and marker.read_text() == stamp:
        return libs
    if shutil.which("mvn") is None:
        raise BuildError("mvn (Apache Maven) is required to fetch the Kafka jars")
    log(f"resolving Apache Kafka {services.KAFKA_VERSION} jars with Maven into {libs}")
    if libs.exists():
        shutil.rmtree(libs)
    libs.mkdir(parents=True)
    _run(
        [
            "mvn", "-q", "-B", "-f", str(pom), f"-Dkafka.version={services.KAFKA_VERSION}",
            "dependency:copy-dependencies", f"-DoutputDirectory={libs}",
            "-DincludeScope=runtime",
        ]
    )  # fmt: skip
    marker.write_text(stamp)
    return libs


def _kafka_hooks(stage: str) -> list[tuple[str, str]]:
    uid = KAFKA_UID
    return [
        # The JRE's post-installation script links its manual page there (dpkg leaves it out).
        ("essential", 'mkdir -p "$1"/usr/share/man/man1'),
        ("customize", f"sync-in {stage} /"),
        (
            "customize",
            f"echo 'kafka:x:{uid}:' >> \"$1\"/etc/group && "
            f"echo 'kafka:x:{uid}:{uid}:Apache Kafka:/var/lib/kafka:/usr/sbin/nologin'"
            ' >> "$1"/etc/passwd && '
            'mkdir -p "$1"/var/lib/kafka/data && '
            f'chown -R {uid}:{uid} "$1"/var/lib/kafka "$1"/opt/kafka/config && '
            'chown -R root:root "$1"/opt/kafka/libs "$1"/opt/kafka/bin',
        ),
        SLIM_HOOK,
    ]


def _kafka_changes(version: str) -> list[str]:
    return [
        "ENV PATH=/opt/kafka/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV LANG=C.UTF-8",
        f"ENV KAFKA_VERSION={version}",
        f"USER {KAFKA_UID}:{KAFKA_UID}",
        "WORKDIR /opt/kafka",
        'ENTRYPOINT ["/opt/kafka/bin/entrypoint.sh"]',
        "EXPOSE 9092",
    ]


def _kafka_inputs() -> str:
    services = load_local_services()
    h = _hasher(
        _rootfs_recipe("kafka", KAFKA_PACKAGES, tools=KAFKA_TOOLS, hooks=_kafka_hooks("STAGE"),
                       changes=_kafka_changes(services.KAFKA_VERSION))
    )  # fmt: skip
    _hash_files(h, _tree(KAFKA_FILES), HERE)
    return h.hexdigest()


def _kafka_tree(stage: Path, libs: Path) -> None:
    """/opt/kafka as the image has it: libs/, bin/ (entrypoint and tools), config/."""
    opt = stage / "opt" / "kafka"
    shutil.copytree(libs, opt / "libs", ignore=shutil.ignore_patterns(".complete"))
    (opt / "bin").mkdir()
    (opt / "config" / "defaults").mkdir(parents=True)
    for name in ("kafka-run-class.sh", "entrypoint.sh"):
        shutil.copy2(KAFKA_FILES / name, opt / "bin" / name)
    for name in ("log4j2.properties", "tools-log4j2.properties"):
        shutil.copy2(KAFKA_FILES / name, opt / "config" / name)
    shutil.copy2(KAFKA_FILES / "server.properties", opt / "config" / "defaults")
    for tool, main in KAFKA_TOOLS.items():
        (opt / "bin" / f"{tool}.sh").write_text(
            f"#!/bin/sh\n# {tool}: runs {main} from the jars in /opt/kafka/libs.\n"
            f'exec /opt/kafka/bin/kafka-run-class.sh {main} "$@"\n'
        )
    for path in (opt / "bin").iterdir():
        path.chmod(0o755)


def _build_kafka(inputs: str) -> None:
    services = load_local_services()
    libs = kafka_libs()
    with tempfile.TemporaryDirectory(prefix="course-audit-kafka-") as tmp:
        stage = Path(tmp) / "stage"
        _kafka_tree(stage, libs)
        tar = Path(tmp) / "rootfs.tar"
        mmdebstrap(tar, KAFKA_PACKAGES, _kafka_hooks(str(stage)))
        docker_import(tar, TAGS["kafka"], _kafka_changes(services.KAFKA_VERSION), inputs)


TAGS: dict[str, str] = {
    "base": f"course-audit-base:{SUITE}",
    "service": f"course-audit:{package_version()}",
    "postgres": f"course-audit-postgres:{POSTGRES_MAJOR}",
    "kafka": "course-audit-kafka:4.1.1",
}

IMAGES: dict[str, Image] = {
    "base": Image("base", TAGS["base"], (), _base_inputs, _build_base),
    "service": Image("service", TAGS["service"], ("base",), _service_inputs, _build_service),
    "postgres": Image("postgres", TAGS["postgres"], (), _postgres_inputs, _build_postgres),
    "kafka": Image("kafka", TAGS["kafka"], (), _kafka_inputs, _build_kafka),
}


def tags() -> dict[str, str]:
    """Every image's tag, by name."""
    return dict(TAGS)


def _order(names: Iterable[str]) -> list[str]:
    """The images asked for and the images they are built on, bases first."""
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name not in IMAGES:
            raise BuildError(f"unknown image {name!r} (known: {', '.join(IMAGES)})")
        for need in IMAGES[name].needs:
            visit(need)
        if name not in ordered:
            ordered.append(name)

    for name in names:
        visit(name)
    return ordered


def ensure(names: Iterable[str] | None = None, *, rebuild: bool = False) -> dict[str, str]:
    """Build each image named (and those it is built on) that is missing or stale.

    Returns {name: tag} for the names asked for. `rebuild` rebuilds the named images even when
    they are current (not the ones they are built on, unless those are stale or named too).
    """
    asked = list(IMAGES) if names is None else list(names)
    order = _order(asked)
    with _lock():
        for name in order:
            _ensure_one(name, rebuild=rebuild and name in asked)
    return {name: IMAGES[name].tag for name in asked}


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """One `ensure` at a time on this machine: two would build the same tags side by side."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another build of the images to finish ({LOCK})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _ensure_one(name: str, *, rebuild: bool) -> None:
    """Build one image if it is missing, stale, or `rebuild`."""
    image = IMAGES[name]
    inputs = image.inputs()
    current = image_label(image.tag)
    if current == inputs and not rebuild:
        return
    why = "missing" if current is None else "rebuild asked" if current == inputs else "stale"
    log(f"building {image.tag} ({why})")
    previous = image_id(image.tag) if current is not None else None
    started = time.monotonic()
    image.build(inputs)
    if image_label(image.tag) != inputs:
        raise BuildError(f"{image.tag}: built, but its inputs label does not match")
    if previous is not None and previous != image_id(image.tag):
        # The image this one replaced, now untagged (Docker keeps it while in use).
        docker("image", "rm", previous, check=False)
    size = image_size(image.tag) / 1e6
    log(f"built {image.tag} in {time.monotonic() - started:.0f} s ({size:.0f} MB)")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("ensure", help="build the images that are missing or stale")
    e.add_argument(
        "--only",
        action="append",
        choices=list(IMAGES),
        metavar="NAME",
        help=f"this image (repeatable; one of {', '.join(IMAGES)}); default all",
    )
    e.add_argument("--rebuild", action="store_true", help="rebuild even when current")
    sub.add_parser("tags", help="print the tags")
    c = sub.add_parser("context", help="write the service image's build context into DIR")
    c.add_argument("dir", type=Path)
    args = p.parse_args(argv)
    try:
        if args.command == "tags":
            found = tags()
        elif args.command == "context":
            service_context(args.dir)
            print(args.dir)
            return 0
        else:
            found = ensure(args.only, rebuild=args.rebuild)
    except BuildError as exc:
        log(f"error: {exc}")
        return 1
    for name, tag in found.items():
        print(f"{name}={tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
