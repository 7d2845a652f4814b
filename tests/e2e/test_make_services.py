"""`make services` twice leaves one broker and one server; `make services-down` stops both."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import asyncpg

from harness import ROOT, load_local_services


def _our_processes(state: Path) -> dict[str, int]:
    """Count live Kafka and PostgreSQL server processes that use this state directory."""
    counts = {"kafka": 0, "postgres": 0}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        joined = b" ".join(argv)
        if str(state).encode() not in joined:
            continue
        if b"kafka.Kafka" in argv:
            counts["kafka"] += 1
        elif argv[0].endswith(b"postgres") and b"-D" in argv:
            counts["postgres"] += 1
    return counts


def _make(target: str, state: Path, env_file: Path, timeout: float) -> None:
    # The three calls' timeouts (120 + 60 + 60 s) stay within the 300 s per-test timeout.
    subprocess.run(
        ["make", "--no-print-directory", target, f"STATE_DIR={state}", f"ENV_FILE={env_file}"],
        cwd=ROOT,
        check=True,
        timeout=timeout,
    )


async def test_services_twice_then_down() -> None:
    # Not under tmp_path: PostgreSQL runs as the `postgres` user, which must traverse the path
    # to its data directory (services.py opens it up), and a concurrent pytest session resets
    # pytest's temporary root to mode 0700 (seen: `pg_ctl stop` failed, "Permission denied").
    base = Path(tempfile.mkdtemp(prefix="course-audit-make-services-"))
    state = base / "state"
    env_file = base / "services.env"
    try:
        _make("services", state, env_file, 120)
        first = env_file.read_text()
        _make("services", state, env_file, 60)
        assert env_file.read_text() == first, "a second start must reuse the running services"
        assert _our_processes(state) == {"kafka": 1, "postgres": 1}

        env = dict(line.split("=", 1) for line in first.splitlines())
        assert set(env) == {"AUDIT_DATABASE_URL", "AUDIT_KAFKA_BOOTSTRAP_SERVERS"}
        conn = await asyncpg.connect(env["AUDIT_DATABASE_URL"])
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
        port = int(env["AUDIT_KAFKA_BOOTSTRAP_SERVERS"].rsplit(":", 1)[1])
        assert load_local_services().kafka_metadata_ok(port)
    finally:
        _make("services-down", state, env_file, 60)
    try:
        assert _our_processes(state) == {"kafka": 0, "postgres": 0}
    finally:
        shutil.rmtree(base, ignore_errors=True)
