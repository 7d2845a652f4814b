"""Helpers of the container layer: the docker CLI and the session label."""

from __future__ import annotations

import subprocess

#: Every container and network a session starts carries this label (value: the session id).
LABEL = "course-audit.containers-test"


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
