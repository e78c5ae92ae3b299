"""Encrypted rooms through a real Synapse, without end-to-bridge encryption: the bridge joins
encrypted DMs, and answers encrypted events it cannot read with an unencrypted notice saying
what to do instead (at a room's first such event, then at most once per interval)."""

from __future__ import annotations

from typing import Any

from tests.conftest import BridgeFactory
from tests.harness.synapse import MatrixClient, SynapseServer
from tests.helpers import command, is_member, management_room, new_user, until

BOT = "@mimibot:localhost"
ENCRYPTION = {
    "type": "m.room.encryption",
    "state_key": "",
    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
}
CANNOT = "cannot read encrypted messages"
# What only the answer to an encrypted event says (not the welcome, nor the ghost's greeting).
TO_BOT = "could not read what you sent here"
TO_PORTAL = "what is sent here does not reach"
TO_GHOST = "your messages in this chat do not reach"


async def _send_encrypted(user: MatrixClient, room: str) -> str:
    # Not a real Megolm message: the bridge cannot decrypt either way.
    return await user.send_event(
        room,
        "m.room.encrypted",
        {
            "algorithm": "m.megolm.v1.aes-sha2",
            "ciphertext": "AwgAEnB4bm90IGEgcmVhbCBjaXBoZXJ0ZXh0",
            "sender_key": "not-a-real-key",
            "session_id": "not-a-real-session",
            "device_id": "TESTDEVICE",
        },
    )


async def _notices(user: MatrixClient, room: str, sender: str, marker: str) -> list[dict[str, Any]]:
    return [
        e
        for e in await user.messages(room)
        if e["type"] == "m.room.message"
        and e["sender"] == sender
        and marker in e["content"].get("body", "")
    ]


def _advance(bridge: Any, seconds: float) -> None:
    notices = bridge.matrix_handler.encrypted_notices
    now = notices.clock()
    notices.clock = lambda: now + seconds


async def test_encrypted_dm_with_the_bot(
    make_bridge: BridgeFactory, synapse: SynapseServer
) -> None:
    bridge = await make_bridge()
    ivy = new_user(synapse)
    room = await ivy.create_room(invite=[BOT], is_direct=True, initial_state=[ENCRYPTION])
    # The bot joins, and its welcome already says that it cannot read this room.
    welcome = await ivy.wait_for_event(
        room, lambda e: e["sender"] == BOT and "management room" in e["content"].get("body", "")
    )
    assert welcome["type"] == "m.room.message"
    assert CANNOT in welcome["content"]["body"]
    assert await is_member(ivy, room, BOT)
    # "help", encrypted: answered, in the clear, saying what to do instead.
    await _send_encrypted(ivy, room)
    notice = await ivy.wait_for_event(
        room, lambda e: e["sender"] == BOT and TO_BOT in e["content"].get("body", "")
    )
    assert notice["type"] == "m.room.message" and notice["content"]["msgtype"] == "m.notice"
    assert "without encryption" in notice["content"]["body"]
    assert BOT in notice["content"]["body"]
    # More encrypted events right after: no notice each time.
    await _send_encrypted(ivy, room)
    await _send_encrypted(ivy, room)
    # A command sent in the clear is handled after them (one ordered queue per room).
    await command(ivy, room, "ping", "Pong")
    assert len(await _notices(ivy, room, BOT, TO_BOT)) == 1
    # Another room's first encrypted event is answered at once.
    other = await ivy.create_room(invite=[BOT], initial_state=[ENCRYPTION])
    await until(lambda: is_member(ivy, other, BOT))
    await _send_encrypted(ivy, other)
    await ivy.wait_for_event(
        other, lambda e: e["sender"] == BOT and TO_BOT in e["content"].get("body", "")
    )
    # Once the interval has passed, the next one is answered again, counting those in between.
    _advance(bridge, bridge.matrix_handler.encrypted_notices.interval_s + 1)
    await _send_encrypted(ivy, room)
    again = await until(
        lambda: _nth_notice(ivy, room, BOT, TO_BOT, 2), what="a second notice after the interval"
    )
    assert "2 more encrypted messages" in again["content"]["body"]
    # The unencrypted way the notice points to works.
    plain = await ivy.create_room(invite=[BOT], is_direct=True)
    await ivy.wait_for_event(plain, lambda e: "management room" in e["content"].get("body", ""))
    await command(ivy, plain, "help", "login")
    await ivy.close()


async def _nth_notice(user: MatrixClient, room: str, sender: str, marker: str, n: int) -> Any:
    found = await _notices(user, room, sender, marker)
    return found[n - 1] if len(found) >= n else None


async def test_encrypted_portal(make_bridge: BridgeFactory, synapse: SynapseServer) -> None:
    bridge = await make_bridge()
    jon = new_user(synapse)
    await jon.set_displayname("Jon")
    mgmt = await management_room(jon)
    room = await jon.create_room(invite=[BOT], initial_state=[ENCRYPTION], name="secret")
    await until(lambda: is_member(jon, room, BOT))
    await command(jon, mgmt, f"link testnet #secret {room}", "Linked")
    await _send_encrypted(jon, room)
    notice = await jon.wait_for_event(
        room, lambda e: e["sender"] == BOT and TO_PORTAL in e["content"].get("body", "")
    )
    body = notice["content"]["body"]
    assert notice["content"]["msgtype"] == "m.notice"
    assert "Test Network" in body and "unlink" in body
    # Nothing reached the network, and a plain message still does.
    await jon.send_text(room, "in the clear")
    await until(lambda: _testnet_sent(bridge, "<Jon> in the clear"))
    assert [e for e in bridge.connectors["testnet"].sent if e["kind"] == "message"] == [  # type: ignore[attr-defined]
        _testnet_sent(bridge, "<Jon> in the clear")
    ]
    await jon.close()


def _testnet_sent(bridge: Any, text: str) -> Any:
    for entry in bridge.connectors["testnet"].sent:
        if entry["kind"] == "message" and entry.get("text") == text:
            return entry
    return None


async def test_encrypted_dm_with_a_ghost(
    make_bridge: BridgeFactory, synapse: SynapseServer
) -> None:
    bridge = await make_bridge()
    kim = new_user(synapse)
    mgmt = await management_room(kim)
    await command(kim, mgmt, "login testnet kim-remote", "Logged in")
    ghost = "@testnet_xena:localhost"
    room = await kim.create_room(invite=[ghost], is_direct=True, initial_state=[ENCRYPTION])
    await until(lambda: is_member(kim, room, ghost))
    assert not await is_member(kim, room, BOT)
    greeting = await kim.wait_for_event(
        room, lambda e: e["sender"] == ghost and "bridged to" in e["content"].get("body", "")
    )
    assert CANNOT in greeting["content"]["body"]
    await _send_encrypted(kim, room)
    # The bot is not in this DM: the ghost says it.
    notice = await kim.wait_for_event(
        room, lambda e: e["sender"] == ghost and TO_GHOST in e["content"].get("body", "")
    )
    assert notice["content"]["msgtype"] == "m.notice"
    assert ghost in notice["content"]["body"] and "without encryption" in notice["content"]["body"]
    await bridge.queues.drain()
    assert not [e for e in bridge.connectors["testnet"].sent if e["kind"] == "message"]  # type: ignore[attr-defined]
    await kim.close()


def test_notice_policy() -> None:
    from bridge.encrypted_notice import EncryptedNotices

    now = [0.0]
    notices = EncryptedNotices(interval_s=600, clock=lambda: now[0])
    assert notices.due("!a") == 0  # a room's first encrypted event: answered
    assert notices.due("!b") == 0  # rooms are counted apart
    now[0] = 599
    assert notices.due("!a") is None and notices.due("!a") is None
    now[0] = 600
    assert notices.due("!a") == 2  # answered again, counting the two in between
    assert notices.due("!a") is None
    notices.forget("!a")  # that notice could not be sent: the next event is answered
    assert notices.due("!a") == 1
