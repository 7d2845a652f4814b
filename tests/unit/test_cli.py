"""The console script: version, help, and a bad setting stopping start-up with one line."""

from __future__ import annotations

import subprocess
import sys

from course_audit import __version__


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "course_audit.cli.parser", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_version() -> None:
    out = _cli("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"course-audit {__version__}"


def test_help_lists_every_subcommand() -> None:
    out = _cli("--help")
    assert out.returncode == 0
    for name in ("run", "consume", "serve", "migrate", "token", "dlq", "produce", "retention",
                 "events"):  # fmt: skip
        assert name in out.stdout


def test_bad_setting_is_one_clear_line() -> None:
    out = _cli("migrate", env={"PATH": "/usr/bin:/bin", "AUDIT_HTTP_PORT": "abc"})
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines == ["course-audit: configuration error: AUDIT_HTTP_PORT='abc' is not an integer"]


def test_every_subcommand_has_a_handler() -> None:
    from course_audit.cli.commands import HANDLERS
    from course_audit.cli.parser import build_parser

    parser = build_parser()
    leaves = [
        ["run"], ["consume"], ["serve"], ["migrate"], ["retention"], ["produce"],
        ["token", "create", "--name", "n", "--root-account", "1"], ["token", "list"],
        ["token", "revoke", "1"], ["dlq", "list"], ["dlq", "replay"],
        ["events", "course", "1"], ["events", "account", "1"],
    ]  # fmt: skip
    paths = {parser.parse_args(argv).command_path for argv in leaves}
    assert paths == set(HANDLERS)
