"""Versioned tables: a database written before the tables had versions (the fixtures in
tests/fixtures, made by that release) is adopted and upgraded without losing a row, on SQLite
and PostgreSQL; new migrations run once, in order, each in a transaction; a database newer
than the release is refused in one line."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
import pytest
from mautrix.util.async_db import Database

from bridge.connector import PortalKey
from bridge.db import DatabaseUnavailable, MessageStore, PortalStore, UserStore, open_database
from bridge.db.transactions import TransactionStore
from connectors.deltachat.connector import DeltaChatConnector
from connectors.irc.connector import IRCConnector
from connectors.xmpp.connector import XMPPConnector
from tests.conftest import BridgeFactory
from tests.harness.postgres import PostgresServer

FIXTURES = Path(__file__).parent / "fixtures"
CONNECTORS = [IRCConnector, XMPPConnector, DeltaChatConnector]
# Every table of the old release: each one's rows must come through the upgrade unchanged.
V0_TABLES = [
    "portal",
    "ghost",
    "matrix_user",
    "user_login",
    "message",
    "reaction",
    "appservice_txn",
    "pending_event",
    "irc_puppet_nick",
    "xmpp_message",
    "xmpp_reaction",
    "xmpp_avatar",
    "xmpp_roster",
    "deltachat_message",
    "deltachat_group",
    "deltachat_dm_owner",
    "deltachat_reaction",
]
_counter = iter(range(1_000_000))


async def _v0_rows(url: str) -> dict[str, set[tuple[Any, ...]]]:
    """The old database's rows, read before the bridge opens it (sqlite3 or asyncpg)."""
    if url.startswith("sqlite:"):
        conn = sqlite3.connect(url.removeprefix("sqlite:"))
        try:
            return {t: set(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in V0_TABLES}
        finally:
            conn.close()
    pg = await asyncpg.connect(url)
    try:
        return {
            t: {tuple(_normal(v) for v in r) for r in await pg.fetch(f"SELECT * FROM {t}")}
            for t in V0_TABLES
        }
    finally:
        await pg.close()


def _normal(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value  # PostgreSQL's booleans


async def _rows(db: Database) -> dict[str, set[tuple[Any, ...]]]:
    out = {}
    for t in V0_TABLES:
        out[t] = {tuple(_normal(v) for v in r) for r in await db.fetch(f"SELECT * FROM {t}")}
    return out


@pytest.fixture
def v0_database(tmp_path: Path, postgres: PostgresServer) -> Callable[[str], str]:
    """A copy of the old release's database on the given backend; returns its URL."""

    def make(backend: str) -> str:
        if backend == "sqlite":
            path = tmp_path / f"v0-{next(_counter)}.db"
            shutil.copyfile(FIXTURES / "db-v0.sqlite", path)
            return f"sqlite:{path}"
        name = f"v0_{next(_counter)}"
        url = postgres.create_database(name)
        restored = postgres._client(
            "psql", "-d", name, "-v", "ON_ERROR_STOP=1", "-q", "-f", str(FIXTURES / "db-v0.pg.sql")
        )
        assert restored.returncode == 0, restored.stderr
        return url

    return make


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_old_database_is_upgraded_without_losing_a_row(
    backend: str, v0_database: Callable[[str], str]
) -> None:
    url = v0_database(backend)
    before = await _v0_rows(url)
    assert all(before.values()), "every table of the fixture holds rows"
    db = await open_database(url, connectors=CONNECTORS)
    try:
        versions = dict(await db.fetch("SELECT component, version FROM schema_versions"))
        assert versions == {"core": 2, "irc": 5, "xmpp": 1, "deltachat": 1}
        assert await _rows(db) == before
        # And through the stores, as the bridge reads them.
        portals = {p.key.network: p for p in await PortalStore(db).all()}
        assert set(portals) == {"irc_libera", "xmpp", "deltachat", "testnet"}
        assert portals["testnet"].plumbed and portals["xmpp"].metadata == {"since": 2026}
        reply = await MessageStore(db).by_event("$2-xmpp")
        assert reply is not None and reply.reply_to == "$1-xmpp" and reply.edit_count == 1
        dm = PortalKey("irc_libera", "bob", "@alice:example.org")
        assert [m.event_id for m in await MessageStore(db).by_remote(dm, "r2")] == [
            "$2-ircdm",
            "$2b-ircdm",
        ]
        assert await UserStore(db).is_management_room("!mgmt:example.org") == "@alice:example.org"
        # Version 2: the events left pending are remembered, so a redelivery is not handled.
        pending = [p for p in await TransactionStore(db).pending() if p.event.get("event_id")]
        assert pending, "the fixture has pending events with ids"
        remembered = {r["event_id"] for r in await db.fetch("SELECT event_id FROM received_event")}
        assert {p.event["event_id"] for p in pending} <= remembered
    finally:
        await db.stop()
    # Opened again: nothing to do, nothing changed.
    db = await open_database(url, connectors=CONNECTORS)
    try:
        assert await _rows(db) == before
        versions = dict(await db.fetch("SELECT component, version FROM schema_versions"))
        assert versions == {"core": 2, "irc": 5, "xmpp": 1, "deltachat": 1}
    finally:
        await db.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_bridge_starts_on_an_old_database(
    backend: str, v0_database: Callable[[str], str], make_bridge: BridgeFactory
) -> None:
    url = v0_database(backend)
    bridge = await make_bridge(database=url, connectors={"testnet": {}})
    portal = await bridge.portal_store.by_room("!test:example.org")
    assert portal is not None and portal.key == PortalKey("testnet", "lobby")
    assert await bridge.users.management_room("@alice:example.org") == "!mgmt:example.org"
    assert await bridge.db.fetchval("SELECT version FROM schema_versions WHERE component='core'")


async def test_fresh_database_gets_every_table_at_its_version(database_url: str) -> None:
    db = await open_database(database_url, connectors=CONNECTORS)
    try:
        versions = dict(await db.fetch("SELECT component, version FROM schema_versions"))
        assert versions == {"core": 2, "irc": 5, "xmpp": 1, "deltachat": 1}
        for t in V0_TABLES:
            assert await db.fetchval(f"SELECT count(*) FROM {t}") == 0
    finally:
        await db.stop()


class _Counter:
    """A connector's tables at two versions: migration 2 adds a column with a default."""

    name: ClassVar[str] = "counter"
    migrations: ClassVar[list[Any]] = [
        "CREATE TABLE counter_item (id TEXT PRIMARY KEY)",
    ]


class _Counter2(_Counter):
    async def _v2(conn: Any, dialect: str) -> None:  # type: ignore[misc]
        await conn.execute("ALTER TABLE counter_item ADD COLUMN n INTEGER NOT NULL DEFAULT 7")

    migrations: ClassVar[list[Any]] = [*_Counter.migrations, _v2]


class _Broken(_Counter):
    # Migration 2 creates a table, then fails: the transaction takes both back.
    migrations: ClassVar[list[Any]] = [
        *_Counter.migrations,
        ["CREATE TABLE counter_half (x TEXT)", "INSERT INTO no_such_table VALUES (1)"],
    ]


async def test_new_migrations_run_once_in_order_and_a_failed_one_changes_nothing(
    database_url: str,
) -> None:
    db = await open_database(database_url, connectors=[_Counter])  # type: ignore[list-item]
    await db.execute("INSERT INTO counter_item (id) VALUES ('a')")
    await db.stop()

    with pytest.raises(DatabaseUnavailable) as failed:
        await open_database(database_url, connectors=[_Broken])  # type: ignore[list-item]
    assert "upgrading the tables of counter to version 2 failed" in str(failed.value)
    assert "\n" not in str(failed.value)

    db = await open_database(database_url, connectors=[_Counter2])  # type: ignore[list-item]
    try:
        assert [tuple(r) for r in await db.fetch("SELECT id, n FROM counter_item")] == [("a", 7)]
        assert (
            await db.fetchval("SELECT version FROM schema_versions WHERE component='counter'") == 2
        )
        with pytest.raises(Exception, match="counter_half"):
            await db.fetch("SELECT * FROM counter_half")
    finally:
        await db.stop()

    # This release knows one migration of "counter"; the database has two: refused.
    with pytest.raises(DatabaseUnavailable) as newer:
        await open_database(database_url, connectors=[_Counter])  # type: ignore[list-item]
    assert "tables of counter are at version 2, newer than this release knows (1)" in str(
        newer.value
    )
