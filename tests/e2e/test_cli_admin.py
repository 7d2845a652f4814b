"""The admin subcommands as an operator runs them: token create/list/revoke, dlq list."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from course_audit.model import DeadLetter, ErrorCode, Source
from course_audit.store.tokens import lookup_token
from course_audit.store.writer import write_dead_letters
from waits import within

CLI = str(Path(sys.executable).parent / "course-audit")


async def _cli(db_url: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        CLI,
        *args,
        env={**os.environ, "AUDIT_DATABASE_URL": db_url, "AUDIT_LOG_FORMAT": "text"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await within(proc.communicate(), 60, f"`course-audit {' '.join(args)}` to exit")
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_token_create_list_revoke(migrated_db_url: str) -> None:
    rc, out, err = await _cli(
        migrated_db_url, "token", "create", "--name", "ops", "--root-account", "1",
        "--root-account", "2",
    )  # fmt: skip
    assert rc == 0, err
    lines = out.splitlines()
    assert len(lines) == 1, "stdout must hold the token alone"
    token = lines[0]
    assert len(token) >= 32 and " " not in token

    conn = await asyncpg.connect(migrated_db_url)
    try:
        info = await lookup_token(conn, token)
        row = await conn.fetchrow("SELECT * FROM api_tokens WHERE id = $1", info.id if info else 0)
    finally:
        await conn.close()
    assert info is not None and info.root_account_ids == (1, 2) and not info.revoked
    # Only the SHA-256 of the token is kept: no column holds the token itself.
    assert row is not None and bytes(row["token_hash"]) == hashlib.sha256(token.encode()).digest()
    assert all(token not in str(value) for value in row.values())

    rc, out, _ = await _cli(migrated_db_url, "token", "list")
    assert rc == 0
    assert f"{info.id}\tops\troot_accounts=1,2" in out and "active" in out
    assert token not in out

    rc, _, err = await _cli(migrated_db_url, "token", "revoke", str(info.id))
    assert rc == 0, err
    rc, out, _ = await _cli(migrated_db_url, "token", "list")
    assert "revoked" in out
    rc, _, err = await _cli(migrated_db_url, "token", "revoke", "999999")
    assert rc == 1 and "no active token" in err

    rc, _, err = await _cli(
        migrated_db_url, "token", "create", "--name", "x", "--root-account", "0"
    )
    assert rc == 2 and "--root-account" in err


async def test_dlq_list_filters_and_prints_json_lines(migrated_db_url: str) -> None:
    now = datetime.now(UTC)
    letters = [
        DeadLetter(Source("t1", 0, 5, b"k", b"\x05x"), ErrorCode.UNKNOWN_MAGIC_BYTE, "bad", now),
        DeadLetter(Source("t2", 1, 9, None, b""), ErrorCode.EMPTY_VALUE, "empty", now),
    ]
    conn = await asyncpg.connect(migrated_db_url)
    try:
        await write_dead_letters(conn, letters)
    finally:
        await conn.close()
    rc, out, _ = await _cli(migrated_db_url, "dlq", "list")
    assert rc == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert {(r["topic"], r["offset"], r["error_code"]) for r in rows} == {
        ("t1", 5, "unknown_magic_byte"),
        ("t2", 9, "empty_value"),
    }
    rc, out, _ = await _cli(migrated_db_url, "dlq", "list", "--code", "empty_value")
    assert [json.loads(line)["topic"] for line in out.splitlines()] == ["t2"]
    rc, out, _ = await _cli(migrated_db_url, "dlq", "list", "--topic", "t1")
    assert [json.loads(line)["error_code"] for line in out.splitlines()] == ["unknown_magic_byte"]
    rc, _, err = await _cli(migrated_db_url, "dlq", "list", "--since", "yesterday")
    assert rc == 2 and "--since" in err
