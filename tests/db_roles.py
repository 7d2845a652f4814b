"""Login roles in the writer and reader groups (docs/operations.md#database-roles), for tests.

Roles belong to the whole PostgreSQL server, so each test makes its own, with unique names,
and drops them afterwards.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg

PASSWORD = "pw"


def as_role(url: str, role: str) -> str:
    """`url` with `role` (and the test password) as its user."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{role}:{PASSWORD}@{host}", parts.path, "", ""))


@contextlib.asynccontextmanager
async def login_roles(server_url: str) -> AsyncIterator[tuple[str, str]]:
    """(writer, reader): new login roles, members of course_audit_writer and
    course_audit_reader, dropped on exit."""
    suffix = uuid.uuid4().hex[:10]
    writer, reader = f"w_{suffix}", f"r_{suffix}"
    admin = await asyncpg.connect(server_url)
    try:
        for role, group in ((writer, "course_audit_writer"), (reader, "course_audit_reader")):
            await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}' IN ROLE {group}")
        yield writer, reader
    finally:
        for role in (writer, reader):
            await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()
