"""The distribution: the sdist and the wheel built from it carry the schemas and migrations, and
the wheel installed into a fresh virtualenv runs from anywhere (nothing read from the checkout).

Builds with `python -m build` (an isolated build: setuptools comes from PyPI) and installs the
wheel's dependencies from PyPI, so this needs the package index; it takes about half a minute.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "service" / "course_audit"

# Written out from the source tree, not asked of the package under test.
SCHEMA_FILES = sorted(p.name for p in (PACKAGE / "schemas").glob("*.avsc"))
MIGRATION_FILES = sorted(p.name for p in (PACKAGE / "store" / "migrations").glob("*.sql"))
VIEWER_FILES = sorted(p.name for p in (PACKAGE / "viewer" / "static").iterdir())
_DECLARED = re.search(r'^__version__ = "([^"]+)"$', (PACKAGE / "__init__.py").read_text(), re.M)
assert _DECLARED is not None, "course_audit/__init__.py declares no __version__"
VERSION = _DECLARED.group(1)

#: Run by the installed interpreter: what the installed package finds on its own.
PROBE = """
import json, sys
from importlib.metadata import version
import course_audit
from course_audit.store.migrate import load_migrations
from course_audit.viewer import load_files
from course_audit.wire.schemas import BUILTIN_SCHEMA_DIR, builtin_catalog
names = sys.argv[1:]
catalog = builtin_catalog()
print(json.dumps({
    "package": course_audit.__file__,
    "schema_dir": str(BUILTIN_SCHEMA_DIR),
    "dist_version": version("course-audit"),
    "readers": {n: catalog.reader(n) is not None for n in names},
    "migrations": [f"{m.version:04d}_{m.name}.sql" for m in load_migrations()],
    "viewer": {name: len(f.body) for name, f in load_files().items()},
}))
"""


def _clean_env() -> dict[str, str]:
    """The environment without anything that would point an interpreter at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        cmd, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{cmd[:4]} failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m build` of the source: an sdist, then a wheel built from that sdist.

    From a copy of the sources alone: the egg-info an editable install leaves in the checkout
    lists the files it saw, and setuptools would ship those even if pyproject.toml forgot them.
    """
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "service",
        source / "service",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"),
    )
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(source)], cwd=out)
    return out


def _one(dist: Path, pattern: str) -> Path:
    found = sorted(dist.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {dist}: {found}"
    return found[0]


def test_the_sdist_and_the_wheel_carry_schemas_migrations_and_the_viewer(dist: Path) -> None:
    wheel = _one(dist, f"course_audit-{VERSION}-py3-none-any.whl")
    sdist = _one(dist, f"course_audit-{VERSION}.tar.gz")
    in_wheel = zipfile.ZipFile(wheel).namelist()
    with tarfile.open(sdist) as tar:
        # Every member sits under one top-level directory, course_audit-VERSION/.
        in_sdist = [name.partition("/")[2] for name in tar.getnames()]
    for names, prefix in ((in_wheel, ""), (in_sdist, "service/")):
        schemas = sorted(
            n.rsplit("/", 1)[1] for n in names if n.startswith(f"{prefix}course_audit/schemas/")
        )
        migrations = sorted(
            n.rsplit("/", 1)[1]
            for n in names
            if n.startswith(f"{prefix}course_audit/store/migrations/")
        )
        viewer = sorted(
            n.rsplit("/", 1)[1]
            for n in names
            if n.startswith(f"{prefix}course_audit/viewer/static/")
        )
        assert schemas == SCHEMA_FILES
        assert migrations == MIGRATION_FILES
        assert viewer == VIEWER_FILES
    # The old top-level directory is gone; nothing outside the package ships in the wheel.
    assert not [n for n in in_wheel if n.startswith("schemas/")]
    assert {n.split("/", 1)[0] for n in in_wheel} == {
        "course_audit",
        f"course_audit-{VERSION}.dist-info",
    }


def test_the_installed_wheel_runs_from_outside_the_checkout(dist: Path, tmp_path: Path) -> None:
    wheel = _one(dist, f"course_audit-{VERSION}-py3-none-any.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    bin_dir = env_dir / "bin"
    work = tmp_path / "elsewhere"  # the working directory: not the checkout, nothing in it
    work.mkdir()
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel)], cwd=work)

    helped = _run([str(bin_dir / "course-audit"), "--help"], cwd=work)
    assert helped.stdout.startswith("usage: course-audit")
    for command in ("run", "consume", "serve", "migrate", "produce", "token", "dlq"):
        assert re.search(rf"^\s+{command}\s", helped.stdout, re.M), command
    versioned = _run([str(bin_dir / "course-audit"), "--version"], cwd=work)
    assert versioned.stdout.strip() == f"course-audit {VERSION}"

    record_names = [name.removesuffix(".avsc") for name in SCHEMA_FILES]
    probed = _run([str(bin_dir / "python"), "-c", PROBE, *record_names], cwd=work)
    found = json.loads(probed.stdout)
    site = (env_dir / "lib").resolve()
    assert Path(found["package"]).resolve().is_relative_to(site), found["package"]
    assert Path(found["schema_dir"]).resolve().is_relative_to(site), found["schema_dir"]
    assert not Path(found["schema_dir"]).resolve().is_relative_to(ROOT)
    assert found["dist_version"] == VERSION
    assert found["readers"] == dict.fromkeys(record_names, True)
    assert found["migrations"] == MIGRATION_FILES
    # The viewer's files, read from the installed package, as in the checkout.
    assert found["viewer"] == {
        name: (PACKAGE / "viewer" / "static" / name).stat().st_size for name in VIEWER_FILES
    }
