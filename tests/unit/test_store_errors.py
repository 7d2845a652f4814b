"""Store errors classified by SQLSTATE (docs/design.md#store-error-classes)."""

from __future__ import annotations

import inspect

import asyncpg
import orjson
import pytest
from asyncpg.exceptions import _base as asyncpg_base

from course_audit.store.errors import Fault, classify, describe, is_data_error, is_transient

#: The documented table, by SQLSTATE class, written out here (not read from the code).
CLASSES = {
    "08": Fault.OUTAGE,
    "40": Fault.OUTAGE,
    "53": Fault.OUTAGE,
    "57": Fault.OUTAGE,
    "58": Fault.OUTAGE,
    "21": Fault.DATA,
    "22": Fault.DATA,
    "23": Fault.DATA,
    "54": Fault.DATA,
}
STATES = {"25006": Fault.OUTAGE, "25P03": Fault.OUTAGE, "55P03": Fault.OUTAGE}


def _server_errors() -> list[type[asyncpg.PostgresError]]:
    return [
        cls
        for _, cls in inspect.getmembers(asyncpg.exceptions, inspect.isclass)
        if issubclass(cls, asyncpg.PostgresError)
        and isinstance(getattr(cls, "sqlstate", None), str)
    ]


@pytest.mark.parametrize("cls", _server_errors(), ids=lambda c: f"{c.sqlstate}-{c.__name__}")
def test_every_server_error_by_its_sqlstate(cls: type[asyncpg.PostgresError]) -> None:
    state: str = cls.sqlstate  # type: ignore[attr-defined]
    if cls is asyncpg.InvalidCachedStatementError:
        expected = Fault.OUTAGE  # 0A000, but asyncpg's "prepare it again"
    else:
        expected = STATES.get(state) or CLASSES.get(state[:2], Fault.OTHER)
    assert classify(cls("refused")) is expected


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        # The case: a 10 KB sis_course_id over the btree index row limit.
        (asyncpg.ProgramLimitExceededError("index row requires 10256 bytes"), Fault.DATA),
        (asyncpg.CharacterNotInRepertoireError("invalid byte sequence: 0x00"), Fault.DATA),
        (asyncpg.UntranslatableCharacterError("unsupported Unicode escape"), Fault.DATA),
        (asyncpg.CardinalityViolationError("affect row a second time"), Fault.DATA),
        (asyncpg.DeadlockDetectedError("deadlock"), Fault.OUTAGE),
        (asyncpg.QueryCanceledError("statement timeout"), Fault.OUTAGE),
        (asyncpg.AdminShutdownError("terminating"), Fault.OUTAGE),
        (asyncpg.ReadOnlySQLTransactionError("read-only"), Fault.OUTAGE),
        (asyncpg.LockNotAvailableError("lock timeout"), Fault.OUTAGE),
        (asyncpg.InsufficientPrivilegeError("permission denied"), Fault.OTHER),
        (asyncpg.UndefinedTableError("no such table"), Fault.OTHER),
        (asyncpg.InvalidPasswordError("password"), Fault.OTHER),
        (asyncpg.InternalServerError("XX000"), Fault.OTHER),
        (asyncpg_base.DataError("invalid input for query argument $1"), Fault.DATA),
        (asyncpg.InterfaceError("connection is closed"), Fault.OUTAGE),
        (asyncpg_base.InternalClientError("cannot switch to state 15"), Fault.OUTAGE),
        (asyncpg_base.ClientConfigurationError("bad sslmode"), Fault.OTHER),
        (ConnectionRefusedError(111, "refused"), Fault.OUTAGE),
        (TimeoutError(), Fault.OUTAGE),
        (orjson.JSONEncodeError("Integer exceeds 64-bit range"), Fault.DATA),
        (UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed"), Fault.DATA),
        (RuntimeError("a bug"), Fault.OTHER),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_examples(exc: BaseException, expected: Fault) -> None:
    assert classify(exc) is expected
    assert is_transient(exc) is (expected is Fault.OUTAGE)
    assert is_data_error(exc) is (expected is Fault.DATA)


def test_describe_names_the_sqlstate() -> None:
    assert describe(asyncpg.ProgramLimitExceededError("index row too big")) == (
        "ProgramLimitExceededError (SQLSTATE 54000): index row too big"
    )
    assert describe(ValueError("bad")) == "ValueError: bad"
