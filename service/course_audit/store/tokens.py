"""API tokens: only a SHA-256 of each token is stored; the token is shown once, at creation."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from course_audit.store.db import Conn

_COLUMNS = "id, name, token_hash, root_account_ids, created_at, revoked_at"

#: Every token `new_token` makes: 32 random bytes in URL-safe base64 without padding.
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token's record (never the token itself)."""

    id: int
    name: str
    root_account_ids: tuple[int, ...]
    created_at: datetime
    revoked_at: datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True, slots=True)
class CreatedToken:
    """A new token: the plaintext exists only here, so print it once and drop it."""

    info: TokenInfo
    token: str = field(repr=False)


def new_token() -> str:
    """A new token's plaintext: 256 random bits (`TOKEN_SHAPE`)."""
    return secrets.token_urlsafe(32)


def well_formed(token: str) -> bool:
    """Whether `token` could be one of ours; anything else is refused before any lookup."""
    return TOKEN_SHAPE.fullmatch(token) is not None


def hash_token(token: str) -> bytes:
    """The stored form of a token."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def _info(row: Any) -> TokenInfo:
    return TokenInfo(
        row["id"], row["name"], tuple(row["root_account_ids"]), row["created_at"], row["revoked_at"]
    )


async def create_token(conn: Conn, name: str, root_account_ids: Sequence[int]) -> CreatedToken:
    """Create a token granting read access to `root_account_ids`."""
    if not name.strip():
        raise ValueError("a token needs a name")
    accounts = sorted(set(root_account_ids))
    if not accounts or any(a <= 0 for a in accounts):
        raise ValueError("a token needs one or more positive root account ids")
    token = new_token()
    row = await conn.fetchrow(
        f"INSERT INTO api_tokens (name, token_hash, root_account_ids) VALUES ($1, $2, $3)"
        f" RETURNING {_COLUMNS}",
        name,
        hash_token(token),
        accounts,
    )
    return CreatedToken(_info(row), token)


async def list_tokens(conn: Conn, *, include_revoked: bool = True) -> list[TokenInfo]:
    """All tokens, oldest first."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM api_tokens WHERE $1 OR revoked_at IS NULL ORDER BY id",
        include_revoked,
    )
    return [_info(r) for r in rows]


async def revoke_token(conn: Conn, token_id: int) -> bool:
    """Revoke a token by id; False if there is no such token or it was already revoked."""
    row = await conn.fetchrow(
        "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL"
        " RETURNING id",
        token_id,
    )
    return row is not None


async def lookup_token(conn: Conn, token: str) -> TokenInfo | None:
    """The record of `token` (revoked ones too: check `.revoked`), or None if unknown.

    Looked up by hash: timing reveals at most something about a SHA-256 digest, which does
    not help guess a 256-bit random token. The digest is compared again in constant time so
    that the answer never rests on a non-constant-time comparison alone.
    """
    digest = hash_token(token)
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM api_tokens WHERE token_hash = $1", digest)
    if row is None or not hmac.compare_digest(bytes(row["token_hash"]), digest):
        return None
    return _info(row)
