"""The puppets' last-message times in the bridge database (both backends)."""

from __future__ import annotations

from typing import Any

from bridge.db import open_database
from connectors.irc import IRCConnector
from connectors.irc.activity import ActivityStore

from .helpers import DatabaseOnly


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


class FakePuppet:
    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.last_message = self.saved_message = 0.0
        self.clock = 1_700_000_000.0

    def sent_message(self) -> float:
        self.clock += 1.0
        self.last_message = self.clock
        return self.clock


async def test_a_talking_puppet_writes_its_time_once_a_minute_and_at_stop(
    database_url: str,
) -> None:
    from types import SimpleNamespace

    from connectors.irc.connector import IRCClient, Network

    db = await open_database(database_url, connectors=[IRCConnector])
    try:
        store = ActivityStore(DatabaseOnly(db))  # type: ignore[arg-type]
        writes: list[float] = []
        save = store.save

        async def counted(netid: str, user_id: str, when: float) -> None:
            writes.append(when)
            await save(netid, user_id, when)

        store.save = counted  # type: ignore[method-assign]
        spawned: list[Any] = []
        puppet = FakePuppet("@a:example.org")
        net = SimpleNamespace(
            cfg=SimpleNamespace(netid="libera"),
            connector=SimpleNamespace(activity_store=store),
            pool=SimpleNamespace(puppets={puppet.user_id: puppet}),
            spawn=spawned.append,
        )
        client = IRCClient(net, puppet)  # type: ignore[arg-type]
        for _ in range(5):  # five messages within seconds: one write, the first
            client._sent_message()
        for coro in spawned:
            await coro
        assert writes == [1_700_000_001.0]
        await Network.save_activity(net)  # type: ignore[arg-type]  # at stop: the latest
        assert writes == [1_700_000_001.0, 1_700_000_005.0]
        assert await store.load("libera") == {"@a:example.org": 1_700_000_005.0}
        await Network.save_activity(net)  # type: ignore[arg-type]  # nothing new: no write
        assert len(writes) == 2
    finally:
        await db.stop()
