"""Classify store exceptions: retry the batch later, or isolate the rows that cause them."""

from __future__ import annotations

import asyncpg
from asyncpg.exceptions import _base as asyncpg_base

# SQLSTATE classes that say nothing about the rows written: connection trouble (08),
# serialization failure or deadlock (40), insufficient resources (53), operator intervention
# such as shutdown or statement timeout (57), system errors (58).
_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "57", "58"})
# Single states: lock_timeout expired (55P03), failover to a read-only standby (25006).
_TRANSIENT_STATES = frozenset({"55P03", "25006"})
# Data exceptions (22) and integrity violations (23) are caused by the values in a row.
_DATA_CLASSES = frozenset({"22", "23"})


def _sqlstate(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) else None


def is_transient(exc: BaseException) -> bool:
    """True when the same write may succeed later unchanged (outage, failover, lock wait).

    The caller retries these with backoff and does not commit offsets meanwhile.
    """
    if is_data_error(exc):
        return False
    if isinstance(exc, OSError | TimeoutError | asyncpg.PostgresConnectionError):
        return True
    if isinstance(exc, asyncpg_base.InterfaceError):
        # "connection is closed", "pool is closing": the connection is gone, not the data.
        return not isinstance(exc, asyncpg_base.ClientConfigurationError)
    if isinstance(exc, asyncpg_base.InternalClientError):
        # What asyncpg raises on the first query over a connection whose backend the server
        # terminated while it sat idle (a restart, pg_terminate_backend): "cannot switch to
        # state ...; another operation is in progress". A new connection fixes it.
        return True
    state = _sqlstate(exc)
    return state is not None and (state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_STATES)


def is_data_error(exc: BaseException) -> bool:
    """True when some row of the batch caused `exc`: bisect the batch to find it.

    Covers server-side data/integrity errors (text with NUL, ``\\u0000`` in JSON...) and the
    client-side encoding errors asyncpg and orjson raise before a row reaches the server.
    """
    if isinstance(exc, asyncpg_base.DataError):  # asyncpg's client-side "invalid input"
        return True
    if isinstance(exc, asyncpg_base.InterfaceError):  # configuration, closed connection
        return False
    if isinstance(exc, asyncpg.PostgresError):
        state = _sqlstate(exc)
        return state is not None and state[:2] in _DATA_CLASSES
    return isinstance(exc, ValueError | TypeError | OverflowError | KeyError)
