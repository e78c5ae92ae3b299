"""The bridge across a PostgreSQL restart: while the database is down, Matrix messages wait
(the homeserver keeps the transactions the bridge could not store, and sends them again), and
once it is back every one reaches the network once, in order; the remote side's messages
sent meanwhile reach Matrix too."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.conftest import BridgeFactory
from tests.harness.postgres import start_postgres
from tests.harness.synapse import SynapseServer
from tests.helpers import command, management_room, new_user, until

COUNT = 5


async def test_matrix_messages_wait_for_postgres_and_arrive_once_in_order(
    make_bridge: BridgeFactory, synapse: SynapseServer, tmp_path: Path
) -> None:
    pg = await asyncio.to_thread(start_postgres, tmp_path / "pg")
    try:
        url = pg.create_database("bridge")
        bridge = await make_bridge(database=url, connectors={"testnet": {}})
        tn: Any = bridge.connectors["testnet"]
        alice = new_user(synapse)
        mgmt = await management_room(alice)
        await command(alice, mgmt, "login testnet alice-remote", "Logged in")
        await command(alice, mgmt, "join testnet #restart", "Invited you")
        room = await alice.join("#testnet_=23restart:localhost")
        await alice.send_text(room, "before")
        await until(lambda: [e for e in tn.sent if e.get("text") == "before"], 30)

        # One message is on its way when the database goes: recorded, still being sent.
        tn.delay = 4
        await alice.send_text(room, "in flight")
        # (Handled events leave the table with the next transaction: look for this one.)
        await until(
            lambda: bridge.db.fetchval(
                "SELECT count(*) FROM pending_event WHERE event LIKE '%in flight%'"
            ),
            30,
        )
        stopped = await asyncio.to_thread(pg._pg_ctl, "-m", "fast", "-w", "stop")
        assert stopped.returncode == 0, stopped.stdout
        pg._running = False
        texts = [f"while down {i}" for i in range(COUNT)]
        for text in texts:
            await alice.send_text(room, text)
        bob_id = await tn.remote_message("#restart", "bob", "bob while down")
        await asyncio.sleep(5)  # the homeserver tries, the bridge cannot store: nothing yet
        tn.delay = 0
        assert [e["text"] for e in tn.sent if e.get("text") == "in flight"] == ["in flight"]
        assert not [e for e in tn.sent if str(e.get("text", "")).startswith("while down")]
        await asyncio.to_thread(pg._start)

        def arrived() -> list[str]:
            got = [str(e["text"]) for e in tn.sent if e["kind"] == "message"]
            got = [t for t in got if t.startswith("while down")]
            return got if len(got) >= COUNT else []

        # The homeserver backs off while the bridge fails: up to a minute between tries.
        got = await until(arrived, 120, "the messages sent while PostgreSQL was down")
        await asyncio.sleep(2)  # nothing more comes (no doubles)
        assert [str(e["text"]) for e in tn.sent if str(e.get("text", "")).startswith("while")] == (
            texts
        )
        assert got == texts
        # Every one is mapped (the one in flight too): the database has them, none is left
        # pending.
        assert [e["text"] for e in tn.sent if e.get("text") == "in flight"] == ["in flight"]
        for entry in tn.sent:
            if str(entry.get("text", "")).startswith(("while down", "in flight")):
                assert (
                    await bridge.db.fetchval(
                        "SELECT count(*) FROM message WHERE remote_id=$1", entry["id"]
                    )
                    == 1
                )
        assert await until(lambda: bridge.db.fetchval("SELECT count(*) = 0 FROM pending_event"), 10)
        # The remote message sent meanwhile reached Matrix and is mapped: a reply finds it.
        bob_evt = await alice.wait_for_event(
            room, lambda e: e["content"].get("body") == "bob while down", timeout=60
        )

        async def bob_mapped() -> Any:
            return await bridge.db.fetchval(
                "SELECT event_id FROM message WHERE remote_id=$1", bob_id
            )

        assert await until(bob_mapped, 30, "the mapping of bob's message") == bob_evt["event_id"]
        await alice.reply(room, bob_evt["event_id"], "answer to bob")
        answer = await until(lambda: [e for e in tn.sent if e.get("text") == "answer to bob"], 30)
        assert answer[0]["reply_to"] == bob_id
    finally:
        await asyncio.to_thread(pg.stop)
