"""Running the migrations of the core and of every connector (see
:mod:`bridge.connector.tables`).

Each component's version is a row of ``schema_versions``. A migration runs in a transaction
together with the update of that row, so a failure leaves the tables as they were and the
next start tries again. On PostgreSQL the transaction first takes an advisory lock, so that
two processes starting on one database do not run a migration twice.

A database newer than this release (a version beyond the last migration it knows) is refused:
an older release could misread tables it does not know."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mautrix.util.async_db import Database, Scheme

from ..connector.tables import Migration, Migrations

# Any fixed number: the key of the advisory lock the migrations take on PostgreSQL.
_LOCK_KEY = 0x6D696D69


class MigrationError(Exception):
    """The tables cannot be brought to this release's version; one line for the admin."""


@dataclass(frozen=True, slots=True)
class Component:
    """The tables of one component: ``name`` is its row in ``schema_versions``."""

    name: str
    migrations: Migrations
    # The version of tables written before ``schema_versions`` existed (0: none there).
    legacy_version: Callable[[Any, str], Awaitable[int]] | None = None

    @property
    def version(self) -> int:
        return len(self.migrations)


def dialect_of(db: Database) -> str:
    return "sqlite" if db.scheme == Scheme.SQLITE else "postgres"


async def _run(conn: Any, dialect: str, migration: Migration) -> None:
    if isinstance(migration, str):
        await conn.execute(migration)
    elif callable(migration):
        await migration(conn, dialect)
    else:
        for statement in migration:
            await conn.execute(statement)


async def _version(conn: Any, name: str) -> int | None:
    value = await conn.fetchval("SELECT version FROM schema_versions WHERE component=$1", name)
    return None if value is None else int(value)


async def _set_version(conn: Any, name: str, version: int) -> None:
    await conn.execute(
        "INSERT INTO schema_versions (component, version) VALUES ($1, $2)"
        " ON CONFLICT (component) DO UPDATE SET version=excluded.version",
        name,
        version,
    )


async def upgrade(db: Database, components: Sequence[Component], log: logging.Logger) -> None:
    """Bring every component's tables to the version of this release."""
    names = [c.name for c in components]
    if len(set(names)) != len(names):
        raise MigrationError(f"two components share a name in schema_versions: {names}")
    dialect = dialect_of(db)
    await db.execute(
        "CREATE TABLE IF NOT EXISTS schema_versions ("
        " component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
    )
    for component in components:
        await _upgrade_one(db, dialect, component, log)


async def _upgrade_one(db: Database, dialect: str, c: Component, log: logging.Logger) -> None:
    conn: Any
    async with db.acquire() as conn:
        current = await _version(conn, c.name)
        if current is None and c.legacy_version is not None:
            async with conn.transaction():
                legacy = await c.legacy_version(conn, dialect)
                if legacy:
                    await _set_version(conn, c.name, legacy)
                    log.info("tables of %s adopted at version %d", c.name, legacy)
            current = await _version(conn, c.name)
    current = current or 0
    if current > c.version:
        raise MigrationError(
            f"the tables of {c.name} are at version {current}, newer than this release knows"
            f" ({c.version}): a newer mimi-bridge used this database; run that one"
        )
    for target in range(current + 1, c.version + 1):
        try:
            async with db.acquire() as conn, conn.transaction():
                if dialect == "postgres":
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
                if (await _version(conn, c.name) or 0) >= target:
                    continue  # another process ran it meanwhile
                await _run(conn, dialect, c.migrations[target - 1])
                await _set_version(conn, c.name, target)
        except Exception as e:
            cause = " ".join(str(e).split()) or type(e).__name__
            raise MigrationError(
                f"upgrading the tables of {c.name} to version {target} failed: {cause}"
            ) from e
        log.info("tables of %s upgraded to version %d", c.name, target)
