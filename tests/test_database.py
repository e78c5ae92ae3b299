"""The ID-mapping database on SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio

from bridge.connector import PortalKey
from bridge.db import (
    Ghost,
    GhostStore,
    LoginRow,
    MessageRow,
    MessageStore,
    Portal,
    PortalStore,
    ReactionRow,
    TransactionStore,
    UserStore,
    open_database,
)

KEY = PortalKey("irc_libera", "#python")
DM = PortalKey("irc_libera", "bob", receiver="@alice:x")


async def test_mapping_round_trip(database_url: str) -> None:
    db = await open_database(database_url)
    try:
        portals, ghosts, msgs = PortalStore(db), GhostStore(db), MessageStore(db)
        await portals.save(Portal(KEY, room_id="!r:x", name="#python", metadata={"k": 1}))
        await portals.save(Portal(DM, room_id="!dm:x", is_direct=True))
        got = await portals.by_room("!r:x")
        assert got is not None and got.key == KEY and got.metadata == {"k": 1}
        assert (await portals.get(DM)).is_direct  # type: ignore[union-attr]
        assert {p.key for p in await portals.all("irc_libera")} == {KEY, DM}
        await ghosts.save(Ghost("irc_libera", "bob", "@irc_libera_bob:x", "Bob"))
        assert (await ghosts.get("irc_libera", "bob")).display_name == "Bob"  # type: ignore[union-attr]
        row = MessageRow(KEY, "m1", 0, "!r:x", "$e1", "bob", "@irc_libera_bob:x", 5, body="hi")
        await msgs.insert(row)
        await msgs.insert(row)  # idempotent
        assert [m.event_id for m in await msgs.by_remote(KEY, "m1")] == ["$e1"]
        assert await msgs.by_remote(DM, "m1") == []  # scoped by portal
        await msgs.record_edit(row, "hi!")
        edited = await msgs.by_event("$e1")
        assert edited is not None and edited.body == "hi!" and edited.edit_count == 1
        await msgs.insert_reaction(ReactionRow(KEY, "m1", "@alice:x", "👍", "!r:x", "$re", "r1"))
        assert (await msgs.reaction(KEY, "m1", "@alice:x", "👍")).event_id == "$re"  # type: ignore[union-attr]
        await msgs.delete_reaction("$re")
        assert await msgs.reaction_by_event("$re") is None
        users = UserStore(db)
        await users.set_management_room("@alice:x", "!m:x")
        assert await users.is_management_room("!m:x") == "@alice:x"
        await users.save_login(LoginRow("irc", "libera:alice", "@alice:x", "sealed"))
        assert [r.login_id for r in await users.logins(user_id="@alice:x")] == ["libera:alice"]
        await portals.delete(DM)
        assert await portals.get(DM) is None
    finally:
        await db.stop()


async def test_transactions_durable_and_idempotent(database_url: str) -> None:
    db = await open_database(database_url)
    try:
        txns = TransactionStore(db)
        evs = [{"room_id": "!a:x", "type": "t", "n": 1}, {"room_id": "!b:x", "type": "t", "n": 2}]
        first = await txns.record("t1", evs)
        assert first is not None and [p.event["n"] for p in first] == [1, 2]
        assert await txns.record("t1", evs) is None
        await txns.done(first[0].seq)
    finally:
        await db.stop()
    # Reopened (a restart): the transaction is still known, the unprocessed event still there.
    db = await open_database(database_url)
    try:
        txns = TransactionStore(db)
        assert await txns.record("t1", evs) is None
        assert [p.event["n"] for p in await txns.pending()] == [2]
    finally:
        await db.stop()


async def test_a_transaction_id_reused_with_new_events_is_handled(database_url: str) -> None:
    """A homeserver whose transaction counter started again (its database or registration
    replaced) sends ids the bridge has seen, with events it has not: they are not lost."""
    db = await open_database(database_url)
    try:
        txns = TransactionStore(db)
        old = {"room_id": "!a:x", "type": "m.room.message", "event_id": "$before"}
        first = await txns.record("8", [old])
        assert first is not None
        await txns.done(first[0].seq)
        invite = {"room_id": "!dm:x", "type": "m.room.member", "event_id": "$invite"}
        again = await txns.record("8", [invite])
        assert again is not None and [p.event["event_id"] for p in again] == ["$invite"]
        # The same transaction once more is a replay: nothing new.
        assert await txns.record("8", [invite]) is None
    finally:
        await db.stop()


async def test_an_event_redelivered_in_another_transaction_is_recorded_once(
    database_url: str,
) -> None:
    db = await open_database(database_url)
    try:
        txns = TransactionStore(db)
        evt = {"room_id": "!a:x", "type": "m.room.message", "event_id": "$once"}
        first = await txns.record("ta", [evt])
        assert first is not None and [p.event["event_id"] for p in first] == ["$once"]
        # Still pending: another transaction with it brings nothing new.
        assert await txns.record("tb", [evt, {**evt, "event_id": "$other"}]) is not None
        assert [p.event["event_id"] for p in await txns.pending()] == ["$once", "$other"]
        for p in await txns.pending():
            await txns.done(p.seq)
    finally:
        await db.stop()
    # After a restart, handled already: still recorded once.
    db = await open_database(database_url)
    try:
        txns = TransactionStore(db)
        assert await txns.record("tc", [evt]) == []
        assert await txns.pending() == []
        # Forgotten once old: the table stays bounded.
        await txns.prune(-1000)
        assert await db.fetchval("SELECT count(*) FROM received_event") == 0
    finally:
        await db.stop()


async def test_handled_events_are_deleted_with_the_next_transaction(database_url: str) -> None:
    db = await open_database(database_url)
    try:
        txns = TransactionStore(db)
        first = await txns.record("h1", [{"room_id": "!a:x", "event_id": "$h1", "n": 1}])
        assert first is not None
        txns.handled(first[0].seq)
        assert [p.event["n"] for p in await txns.pending()] == [1]  # not deleted on its own
        second = await txns.record("h2", [{"room_id": "!a:x", "event_id": "$h2", "n": 2}])
        assert second is not None
        assert [p.event["n"] for p in await txns.pending()] == [2]  # went with h2's commit
        txns.handled(second[0].seq)
        # A repeated transaction records nothing, and still takes the deletions along.
        assert await txns.record("h2", [{"room_id": "!a:x", "event_id": "$h2", "n": 2}]) is None
        assert await txns.pending() == []
        third = await txns.record("h3", [{"room_id": "!a:x", "event_id": "$h3", "n": 3}])
        assert third is not None
        txns.handled(third[0].seq)
        await txns.close()  # at stop: nothing handled is left pending
    finally:
        await db.stop()
    db = await open_database(database_url)
    try:
        assert await TransactionStore(db).pending() == []
    finally:
        await db.stop()


async def test_handled_events_are_deleted_after_a_moment_without_traffic(
    database_url: str,
) -> None:
    db = await open_database(database_url)
    try:
        txns = TransactionStore(db)
        first = await txns.record("q1", [{"room_id": "!a:x", "event_id": "$q1"}])
        assert first is not None
        txns.handled(first[0].seq)
        for _ in range(100):
            if not await txns.pending():
                break
            await asyncio.sleep(0.1)
        assert await txns.pending() == []
    finally:
        await db.stop()


async def test_message_rows_inserted_together(database_url: str) -> None:
    db = await open_database(database_url)
    try:
        msgs = MessageStore(db)
        rows = [
            MessageRow(KEY, f"b{i}", 0, "!r:x", f"$b{i}", "bob", "@irc_libera_bob:x", i, body="x")
            for i in range(3)
        ]
        await msgs.insert_many(rows)
        await msgs.insert_many(rows[:1])  # idempotent
        for i in range(3):
            assert [m.event_id for m in await msgs.by_remote(KEY, f"b{i}")] == [f"$b{i}"]
    finally:
        await db.stop()


def _row(event_id: str, remote_id: str) -> MessageRow:
    return MessageRow(KEY, remote_id, 0, "!r:x", event_id, "@a:x", "@a:x", 1, body="hi")


async def _stored(db: object, event_id: str) -> bool:
    return bool(await db.fetchval("SELECT 1 FROM message WHERE event_id=$1", event_id))  # type: ignore[attr-defined]


async def test_rows_written_behind_ride_the_next_transaction(database_url: str) -> None:
    """A bridged message's row is found at once, and stored in the trip that records the next
    appservice transaction, before the deletion of the pending event that produced it."""
    db = await open_database(database_url)
    try:
        msgs = MessageStore(db)
        txns = TransactionStore(db, rider=msgs.take)
        first = await txns.record("t1", [{"room_id": "!r:x", "event_id": "$in1", "type": "t"}])
        assert first is not None
        msgs.insert_later([_row("$out1", "r1")])
        txns.handled(first[0].seq)
        assert (await msgs.by_event("$out1")) == _row("$out1", "r1")
        assert [m.event_id for m in await msgs.by_remote(KEY, "r1")] == ["$out1"]
        assert not await _stored(db, "$out1")
        await txns.record("t2", [{"room_id": "!r:x", "event_id": "$in2", "type": "t"}])
        assert await _stored(db, "$out1")
        assert msgs.take() is None  # nothing left for a trip of its own
        assert [p.event["event_id"] for p in await txns.pending()] == ["$in2"]
    finally:
        await db.stop()


async def test_rows_written_behind_are_stored_on_their_own(database_url: str) -> None:
    """Without a transaction coming, the rows are stored within a moment; a failed trip puts
    them back (still found), and a change of a row waits until it is stored."""
    from bridge.db import messages as messages_mod

    db = await open_database(database_url)
    try:
        msgs = MessageStore(db)
        msgs.insert_later([_row("$a", "ra"), _row("$b", "rb")])
        await asyncio.sleep(messages_mod.BEHIND_S * 4)
        assert await _stored(db, "$a") and await _stored(db, "$b")
        msgs.insert_later([_row("$c", "rc")])
        batch = msgs.take()
        assert batch is not None and len(batch.statements) == 1
        batch.settle(False)  # that trip failed
        assert (await msgs.by_event("$c")) is not None and not await _stored(db, "$c")
        await msgs.delete(_row("$c", "rc"))  # stored first, then deleted
        assert not await _stored(db, "$c") and await msgs.by_event("$c") is None
        msgs.insert_later([_row("$d", "rd")])
        assert await msgs.count("!r:x") == 3  # $a, $b and $d, stored before counting
        await msgs.close()
    finally:
        await db.stop()


async def test_stored_waits_for_the_rows_written_behind_so_far(database_url: str) -> None:
    """What the scale-out core waits for before acknowledging a remote event to the stream:
    its mapping's row in the database (rows added later are not waited for)."""
    db = await open_database(database_url)
    try:
        msgs = MessageStore(db)
        await msgs.stored()  # nothing written behind: at once
        msgs.insert_later([_row("$e", "re")])
        waiting = asyncio.create_task(msgs.stored())
        await asyncio.sleep(0)
        msgs.insert_later([_row("$f", "rf")])
        assert not waiting.done()
        await asyncio.wait_for(waiting, 5)
        assert await _stored(db, "$e")
        await msgs.close()
    finally:
        await db.stop()
