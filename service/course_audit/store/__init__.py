"""The PostgreSQL store (asyncpg): migrations, partitions, the write path, tokens.

Queries for the API live with the API; this package owns the schema and the writes.
"""

from course_audit.store.db import Conn
from course_audit.store.dead_letters import (
    StoredDeadLetter,
    list_dead_letters,
    mark_replayed,
    update_dead_letter_error,
)
from course_audit.store.errors import is_data_error, is_transient
from course_audit.store.migrate import Migration, MigrationError, migrate, pending_migrations
from course_audit.store.partitions import (
    PartitionCache,
    drop_expired,
    ensure_partition_for,
    ensure_partitions,
)
from course_audit.store.tokens import (
    CreatedToken,
    TokenInfo,
    create_token,
    list_tokens,
    lookup_token,
    revoke_token,
)
from course_audit.store.writer import (
    IsolatedWrite,
    Rejected,
    WriteResult,
    write_batch,
    write_dead_letters,
    write_isolating,
)

__all__ = [
    "Conn",
    "CreatedToken",
    "IsolatedWrite",
    "Migration",
    "MigrationError",
    "PartitionCache",
    "Rejected",
    "StoredDeadLetter",
    "TokenInfo",
    "WriteResult",
    "create_token",
    "drop_expired",
    "ensure_partition_for",
    "ensure_partitions",
    "is_data_error",
    "is_transient",
    "list_dead_letters",
    "list_tokens",
    "lookup_token",
    "mark_replayed",
    "migrate",
    "pending_migrations",
    "revoke_token",
    "update_dead_letter_error",
    "write_batch",
    "write_dead_letters",
    "write_isolating",
]
