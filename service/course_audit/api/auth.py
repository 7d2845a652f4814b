"""Bearer tokens (header or `access_token` parameter), checked against the store's hashes."""

from __future__ import annotations

from aiohttp import web

from course_audit.api.errors import invalid_token, unauthenticated
from course_audit.cache import TtlCache
from course_audit.store.db import Conn
from course_audit.store.tokens import TokenInfo, hash_token, lookup_token

#: How long a looked-up token is trusted without asking the store again; a revocation takes
#: effect within this many seconds on every replica.
TOKEN_TTL_S = 2.0
TOKEN_CACHE_SIZE = 10_000


def bearer_token(request: web.Request) -> str | None:
    """The token of `Authorization: Bearer ...`, else of `?access_token=`, else None."""
    header = request.headers.get("Authorization")
    if header:
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    token = request.query.get("access_token")
    return token or None


#: Recent lookups by token digest (never the token itself). Only tokens the store knows are
#: kept, so a token created a moment ago works at once.
TokenCache = TtlCache[bytes, TokenInfo]


def token_cache() -> TokenCache:
    """A cache of `TOKEN_CACHE_SIZE` tokens, each trusted for `TOKEN_TTL_S` seconds."""
    return TtlCache(TOKEN_CACHE_SIZE, TOKEN_TTL_S)


async def authenticate(conn: Conn, token: str, cache: TokenCache) -> TokenInfo:
    """The active token's record; raise the 401 ApiError for an unknown or revoked one."""
    digest = hash_token(token)
    info = cache.get(digest)
    if info is None:
        info = await lookup_token(conn, token)
        if info is None:
            raise invalid_token(revoked=False)
        cache.put(digest, info)
    if info.revoked:
        raise invalid_token(revoked=True)
    return info


def require_token(request: web.Request) -> str:
    """The request's token; raise the 401 for a request without one."""
    token = bearer_token(request)
    if token is None:
        raise unauthenticated()
    return token
