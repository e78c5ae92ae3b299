"""Versioned tables: how the core and each connector declare the schema of their own tables.

A component's tables are described by its ordered list of migrations. Migration ``n`` (counted
from 1) brings the tables from version ``n - 1`` to version ``n``; the database remembers each
component's version in ``schema_versions`` and, at start-up, runs the migrations it has not seen
yet, each in its own transaction. Migrations are history: once released, one is never changed,
a change to the tables is a new migration at the end of the list.

A migration is one SQL statement, a list of statements, or an async function called with a
connection (``execute``, ``fetch``, ``fetchval``...) and the dialect, ``"sqlite"`` or
``"postgres"``, for the steps that differ between the two (copying a table to change a column
type in SQLite, say). Use ``$1``-style parameters; SQLite takes them too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

MigrationStep = Callable[[Any, str], Awaitable[None]]
Migration = str | Sequence[str] | MigrationStep
Migrations = Sequence[Migration]


async def table_exists(conn: Any, dialect: str, name: str) -> bool:
    """Whether the table ``name`` exists (in the current schema on PostgreSQL): for a first
    migration that adopts tables an older release created without a version."""
    if dialect == "sqlite":
        query = "SELECT 1 FROM sqlite_master WHERE type='table' AND name=$1"
    else:
        query = (
            "SELECT 1 FROM information_schema.tables"
            " WHERE table_schema=current_schema() AND table_name=$1"
        )
    return await conn.fetchval(query, name) is not None
