"""Fixtures for integration tests of the store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest


@pytest.fixture
async def conn(migrated_db_url: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A connection to this test's own migrated database."""
    connection = await asyncpg.connect(migrated_db_url)
    try:
        yield connection
    finally:
        await connection.close()
