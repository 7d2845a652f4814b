"""Bearer tokens (header or `access_token` parameter), checked against the store's hashes.

What can be refused without the store is refused first (docs/api.md#authentication): a
request with a header that is not UTF-8, and a token not shaped like the ones we make.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web

from course_audit.api.errors import invalid_token, unauthenticated, undecodable_header
from course_audit.cache import TtlCache
from course_audit.store.db import Conn
from course_audit.store.tokens import TokenInfo, hash_token, lookup_token, well_formed

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


def cached_token(token: str, cache: TokenCache) -> TokenInfo | None:
    """The active token's cached record (raise the 401 for a revoked one); None if not cached."""
    info = cache.get(hash_token(token))
    if info is not None and info.revoked:
        raise invalid_token(revoked=True)
    return info


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


def headers_are_utf8(raw_headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether every header name and value arrived as valid UTF-8.

    aiohttp decodes header bytes as UTF-8 with `surrogateescape` (its C and Python parsers
    alike), so a stray byte would reach us as a lone surrogate; the bytes received decide.
    """
    for name, value in raw_headers:
        if not (name.isascii() and value.isascii()):
            try:
                name.decode("utf-8")
                value.decode("utf-8")
            except UnicodeDecodeError:
                return False
    return True


def require_token(request: web.Request) -> str:
    """The request's token, refusing without the store (401) a request whose headers are not
    UTF-8, one without a token, and one whose token is not shaped like ours."""
    if not headers_are_utf8(request.raw_headers):
        raise undecodable_header()
    token = bearer_token(request)
    if token is None:
        raise unauthenticated()
    if not well_formed(token):
        raise invalid_token(revoked=False)
    return token
