"""API tokens: shown once, stored as a hash, looked up, revoked."""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg
import pytest

from course_audit.store.tokens import create_token, list_tokens, lookup_token, revoke_token


async def test_create_then_lookup(conn: asyncpg.Connection[Any]) -> None:
    created = await create_token(conn, "analytics", [20, 10, 20])
    assert len(created.token) >= 43 and created.token not in repr(created)
    info = await lookup_token(conn, created.token)
    assert info == created.info
    assert info is not None
    assert (info.name, info.root_account_ids, info.revoked) == ("analytics", (10, 20), False)

    # Only the SHA-256 is stored; the token itself appears nowhere in the table.
    row = await conn.fetchrow(
        "SELECT token_hash, row_to_json(t)::text AS everything FROM api_tokens t"
    )
    assert row is not None
    assert row["token_hash"] == hashlib.sha256(created.token.encode()).digest()
    assert created.token not in row["everything"]


async def test_unknown_token_is_none(conn: asyncpg.Connection[Any]) -> None:
    created = await create_token(conn, "a", [1])
    assert await lookup_token(conn, "not-a-token") is None
    assert await lookup_token(conn, created.token[:-1]) is None
    assert await lookup_token(conn, "") is None


async def test_tokens_are_distinct(conn: asyncpg.Connection[Any]) -> None:
    a, b = await create_token(conn, "same name", [1]), await create_token(conn, "same name", [1])
    assert a.token != b.token and a.info.id != b.info.id
    assert (await lookup_token(conn, b.token)) == b.info


async def test_revoke(conn: asyncpg.Connection[Any]) -> None:
    keep = await create_token(conn, "keep", [1])
    gone = await create_token(conn, "gone", [2])
    assert await revoke_token(conn, gone.info.id)
    assert not await revoke_token(conn, gone.info.id)  # already revoked
    assert not await revoke_token(conn, 10**9)  # no such token

    info = await lookup_token(conn, gone.token)
    assert info is not None and info.revoked and info.revoked_at is not None
    still = await lookup_token(conn, keep.token)
    assert still is not None and not still.revoked

    assert [t.name for t in await list_tokens(conn)] == ["keep", "gone"]
    assert [t.name for t in await list_tokens(conn, include_revoked=False)] == ["keep"]


@pytest.mark.parametrize(("name", "accounts"), [("", [1]), ("x", []), ("x", [0]), ("x", [-3])])
async def test_create_rejects_bad_input(
    conn: asyncpg.Connection[Any], name: str, accounts: list[int]
) -> None:
    with pytest.raises(ValueError):
        await create_token(conn, name, accounts)
    assert await list_tokens(conn) == []
