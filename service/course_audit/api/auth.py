"""Bearer tokens (header or `access_token` parameter), checked against the store's hashes."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import web

from course_audit.api.errors import invalid_token, unauthenticated
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


class TokenCache:
    """Recent lookups by token digest (never the token itself), for `TOKEN_TTL_S` seconds.

    Only tokens the store knows are kept: a token created a moment ago works at once.
    """

    def __init__(
        self,
        ttl_s: float = TOKEN_TTL_S,
        size: int = TOKEN_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self.clock = clock
        self._entries: OrderedDict[bytes, tuple[float, TokenInfo]] = OrderedDict()

    def get(self, digest: bytes) -> TokenInfo | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            del self._entries[digest]
            return None
        return entry[1]

    def put(self, digest: bytes, info: TokenInfo) -> None:
        self._entries[digest] = (self.clock() + self.ttl_s, info)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


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
