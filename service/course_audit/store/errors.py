"""Classify store exceptions by SQLSTATE: an outage (retry the batch), a row's data (isolate
it), or a fault (retry, loudly). The table is docs/design.md#store-error-classes.
"""

from __future__ import annotations

import enum

import asyncpg
from asyncpg.exceptions import _base as asyncpg_base


class Fault(enum.Enum):
    """What a failed write says, and so what the writer does next."""

    #: The database is unreachable, busy or failing over: the same write may succeed later
    #: unchanged. Retried with backoff, readiness false, nothing committed meanwhile.
    OUTAGE = "outage"
    #: Some row of the batch caused it: bisect the batch, dead-letter the row (store_rejected).
    DATA = "data"
    #: Neither: a statement, privilege or server fault that no row causes and that only an
    #: operator (or a fix) can end. Retried like an outage, logged as an error.
    OTHER = "other"


# SQLSTATE classes (the first two characters) and what they are. The classes left out (42
# syntax or access rule, 0A feature not supported, 28 authorization, 3D catalog, XX internal,
# P0 PL/pgSQL...) are OTHER: the statement is fixed and its parameters typed, so no value can
# raise them, and dead-lettering every row of every batch for them would empty the stream
# into the dead letters.
_CLASSES: dict[str, Fault] = {
    "08": Fault.OUTAGE,  # connection exception
    "40": Fault.OUTAGE,  # transaction rollback: serialization failure, deadlock
    "53": Fault.OUTAGE,  # insufficient resources: disk full, out of memory, too many connections
    "57": Fault.OUTAGE,  # operator intervention: shutdown, crash, cancel, statement timeout
    "58": Fault.OUTAGE,  # system error: I/O error
    "21": Fault.DATA,  # cardinality violation: rows of the batch that collide
    "22": Fault.DATA,  # data exception: NUL in text, \u0000 in JSON, out-of-range value
    "23": Fault.DATA,  # integrity constraint violation: NOT NULL, CHECK, no partition for a row
    "54": Fault.DATA,  # program limit exceeded: index row too large, jsonb or statement too big
}
# Single states whose class says otherwise.
_STATES: dict[str, Fault] = {
    "25006": Fault.OUTAGE,  # read_only_sql_transaction: a failover to a standby
    "25P03": Fault.OUTAGE,  # idle_in_transaction_session_timeout: the session is gone
    "55P03": Fault.OUTAGE,  # lock_not_available: lock_timeout expired (partition DDL)
}


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE PostgreSQL sent with `exc`, if it came from the server."""
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) else None


def classify(exc: BaseException) -> Fault:
    """What `exc`, raised by a write, says about the database and the rows written."""
    if isinstance(exc, asyncpg.PostgresError):
        state = sqlstate(exc)
        if state is None:
            return Fault.OTHER
        if isinstance(exc, asyncpg.InvalidCachedStatementError):
            # 0A000 after a migration changed a table under a prepared statement: the next
            # attempt prepares it again.
            return Fault.OUTAGE
        return _STATES.get(state) or _CLASSES.get(state[:2], Fault.OTHER)
    if isinstance(exc, asyncpg_base.DataError):
        # asyncpg's client-side "invalid input for query argument": a value it cannot encode.
        return Fault.DATA
    if isinstance(exc, asyncpg_base.ClientConfigurationError):
        return Fault.OTHER
    if isinstance(exc, asyncpg_base.InterfaceError | asyncpg_base.InternalClientError):
        # "connection is closed", "pool is closing"; and what asyncpg raises on the first query
        # over a connection whose backend the server terminated while it sat idle ("cannot
        # switch to state ...; another operation is in progress"). A new connection fixes it.
        return Fault.OUTAGE
    if isinstance(exc, OSError | TimeoutError):
        return Fault.OUTAGE  # refused, reset, unreachable, timed out
    if isinstance(exc, ValueError | TypeError | OverflowError | KeyError):
        # Raised while encoding a row before it reaches the server: orjson's JSONEncodeError
        # (an integer beyond 64 bits, a lone surrogate), UnicodeEncodeError.
        return Fault.DATA
    return Fault.OTHER


def is_transient(exc: BaseException) -> bool:
    """True when the same write may succeed later unchanged (outage, failover, lock wait).

    The caller retries these with backoff and does not commit offsets meanwhile.
    """
    return classify(exc) is Fault.OUTAGE


def is_data_error(exc: BaseException) -> bool:
    """True when some row of the batch caused `exc`: bisect the batch to find it.

    Covers server-side data, integrity and size-limit errors (text with NUL, ``\\u0000`` in
    JSON, an index row over the btree limit...) and the client-side encoding errors asyncpg
    and orjson raise before a row reaches the server.
    """
    return classify(exc) is Fault.DATA


def describe(exc: BaseException) -> str:
    """`exc` for a log line or a dead letter: its type, its SQLSTATE if any, its text."""
    state = sqlstate(exc)
    kind = type(exc).__name__ if state is None else f"{type(exc).__name__} (SQLSTATE {state})"
    return f"{kind}: {exc}"
