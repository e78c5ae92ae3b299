"""The bot's crypto store lost while the homeserver keeps its device (the store's tables
wiped, or the database restored from an old backup): the bridge makes a new device, deletes
the old one, says so in the log, and encrypted rooms go on working."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
from mautrix.api import Method
from mautrix.api import Path as MxPath

from tests.conftest import BridgeFactory
from tests.e2ee.conftest import NioFactory
from tests.e2ee.helpers import BOT, encrypted_management_room, was_encrypted
from tests.helpers import until


def _wipe_crypto_store(db: Path) -> None:
    with sqlite3.connect(db) as c:
        tables = c.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'crypto_%'"
            " AND name != 'crypto_version'"
        ).fetchall()
        assert any(t == ("crypto_account",) for t in tables), tables
        for (table,) in tables:
            c.execute(f"DELETE FROM {table}")


async def test_lost_crypto_store_gets_a_new_device(
    make_bridge: BridgeFactory,
    nio_user: NioFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bridge = await make_bridge(encryption={"allow": True})
    assert bridge.crypto is not None
    old = bridge.crypto.device_id
    alice = await nio_user()
    room = await encrypted_management_room(alice)
    await alice.send_text(room, "ping")
    await alice.wait_for_body(room, "Pong.", sender=BOT)
    await bridge.stop()
    _wipe_crypto_store(tmp_path / "bridge.db")

    caplog.set_level(logging.INFO)
    again = await make_bridge(encryption={"allow": True})
    assert again.crypto is not None
    new = again.crypto.device_id
    assert new and new != old
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "were lost" in r.getMessage()
    ]
    assert len(lines) == 1, lines
    assert old in lines[0] and new in lines[0] and "deleted" in lines[0]
    devices = await again.hs.request(Method.GET, MxPath.v3.devices)
    ids = {d["device_id"] for d in devices["devices"]}
    assert new in ids and old not in ids, ids

    # Her client learns of the new device and encrypts for it; the answers come from it.
    def knows_new_device() -> bool:
        devices = alice.client.device_store.active_user_devices(BOT)
        return any(d.device_id == new for d in devices)

    await until(knows_new_device, 45)
    # No stale device left: the homeserver publishes no keys for the old one, and her
    # client no longer counts it among the bot's devices (nothing is encrypted for it).
    assert alice.raw is not None
    queried = await alice.raw.call(
        "POST", "/_matrix/client/v3/keys/query", {"device_keys": {BOT: []}}
    )
    published = set(queried["device_keys"].get(BOT, {}))
    assert new in published and old not in published, published
    active = {d.device_id for d in alice.client.device_store.active_user_devices(BOT)}
    assert old not in active, active
    sent = await alice.send_text(room, "help")
    assert await was_encrypted(alice, room, sent)
    answer = await alice.wait_for_body(room, "login <network>", sender=BOT)
    assert alice.raw is not None
    raw = await alice.raw.get_event(room, answer.event_id)
    assert raw["type"] == "m.room.encrypted" and raw["content"]["device_id"] == new


async def test_account_not_matching_its_published_device_gets_a_new_device(
    make_bridge: BridgeFactory,
    nio_user: NioFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A restored store whose Olm account is not the one whose keys the homeserver publishes
    for its device (here: the account of another install, under the first one's device)."""
    first = await make_bridge(encryption={"allow": True})
    assert first.crypto is not None
    device = first.crypto.device_id
    await first.stop()
    other_db = tmp_path / "other.db"
    other = await make_bridge(database=f"sqlite://{other_db}", encryption={"allow": True})
    await other.stop()
    with sqlite3.connect(other_db) as src:
        account = src.execute("SELECT account, shared FROM crypto_account").fetchone()
        pickle_key = src.execute(
            "SELECT value FROM mimi_crypto_secret WHERE name='pickle_key'"
        ).fetchone()
    with sqlite3.connect(tmp_path / "bridge.db") as dst:
        dst.execute("UPDATE crypto_account SET account=?, shared=?", account)
        dst.execute("UPDATE mimi_crypto_secret SET value=? WHERE name='pickle_key'", pickle_key)

    caplog.set_level(logging.INFO)
    again = await make_bridge(encryption={"allow": True})
    assert again.crypto is not None
    new = again.crypto.device_id
    assert new != device
    lines = [r.getMessage() for r in caplog.records if "were lost" in r.getMessage()]
    assert len(lines) == 1 and device in lines[0] and new in lines[0], lines
    devices = await again.hs.request(Method.GET, MxPath.v3.devices)
    assert device not in {d["device_id"] for d in devices["devices"]}

    bob = await nio_user()
    room = await encrypted_management_room(bob)
    await bob.send_text(room, "help")
    answer = await bob.wait_for_body(room, "login <network>", sender=BOT)
    assert bob.raw is not None
    raw = await bob.raw.get_event(room, answer.event_id)
    assert raw["content"]["device_id"] == new
