"""The puppets' last-message times in the bridge database (both backends)."""

from __future__ import annotations

from typing import Any

from bridge.db import open_database
from connectors.irc import IRCConnector
from connectors.irc.activity import ActivityStore


class DatabaseOnly:
    def __init__(self, db: Any) -> None:
        self.db = db

    def database(self) -> Any:
        return self.db


async def test_activity_is_kept_and_only_moves_forward(database_url: str) -> None:
    db = await open_database(database_url, connectors=[IRCConnector])
    try:
        store = ActivityStore(DatabaseOnly(db))  # type: ignore[arg-type]
        await store.save("libera", "@a:example.org", 1_700_000_000.25)
        await store.save("libera", "@b:example.org", 1_700_000_100.5)
        await store.save("oftc", "@a:example.org", 1_600_000_000.0)
        # A write that lands late (an older message) leaves the newer time.
        await store.save("libera", "@b:example.org", 1_700_000_050.0)
        again = ActivityStore(DatabaseOnly(db))  # type: ignore[arg-type]
        assert await again.load("libera") == {
            "@a:example.org": 1_700_000_000.25,
            "@b:example.org": 1_700_000_100.5,
        }
        assert await again.load("oftc") == {"@a:example.org": 1_600_000_000.0}
    finally:
        await db.stop()


async def test_without_a_database_nothing_is_kept() -> None:
    class NoDatabase:
        def database(self) -> Any:
            raise RuntimeError("none")

    store = ActivityStore(NoDatabase())  # type: ignore[arg-type]
    await store.save("libera", "@a:example.org", 1.0)
    assert await store.load("libera") == {}
