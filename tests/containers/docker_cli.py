"""Helpers of the container layer: the docker CLI, the image builder, the session label."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
#: Every container and network a session starts carries this label (value: the session id).
LABEL = "course-audit.containers-test"


def load_image_builder() -> ModuleType:
    """Import deploy/images/build.py (a script, not part of the package)."""
    path = ROOT / "deploy" / "images" / "build.py"
    spec = importlib.util.spec_from_file_location("image_builder", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def docker(
    *args: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI; the result whatever its exit status (callers check it)."""
    return subprocess.run(
        ["docker", *args], input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )


def docker_ok(*args: str, stdin: str | None = None, timeout: float = 120) -> str:
    """Run the docker CLI and return its standard output; fail the test if it fails."""
    done = docker(*args, stdin=stdin, timeout=timeout)
    assert done.returncode == 0, f"docker {' '.join(args[:3])} failed: {done.stderr.strip()}"
    return done.stdout
