"""An encrypted DM a Matrix user opens with a ghost: the ghost brings the bot in (only the bot
has a device, and clients share their keys with members only), the bot's device decrypts her
messages, and the ghost's answers are encrypted by it."""

from __future__ import annotations

from typing import Any

from tests.conftest import BridgeFactory
from tests.e2ee.conftest import NioFactory
from tests.e2ee.helpers import BOT, command, encrypted_management_room, was_encrypted
from tests.e2ee.nio_user import NioUser
from tests.helpers import sent, until

ZOE = "@testnet_zoe:localhost"


async def invite_direct(user: NioUser, room: str, invitee: str) -> None:
    """An invite marked direct, as createRoom's ``is_direct`` makes it."""
    assert user.raw is not None
    await user.raw.call(
        "PUT",
        f"/_matrix/client/v3/rooms/{room}/state/m.room.member/{invitee}",
        json={"membership": "invite", "is_direct": True},
    )


async def test_encrypted_dm_with_a_ghost(make_bridge: BridgeFactory, nio_user: NioFactory) -> None:
    bridge = await make_bridge(encryption={"allow": True})
    frank = await nio_user()
    mgmt = await encrypted_management_room(frank)
    await command(frank, mgmt, "login testnet frank-remote", "Logged in")

    room = await frank.create_encrypted_room(invite=[ZOE], is_direct=True)
    await frank.wait_member(room, ZOE)
    await frank.wait_member(room, BOT)
    opened = await frank.wait_for_body(room, "decrypted at the bridge", sender=ZOE)
    assert await was_encrypted(frank, room, opened.event_id)

    await frank.send_text(room, "hi zoe")
    dm = await until(sent(bridge, "message", text="hi zoe"), 45)
    assert dm["room"] == "zoe"

    tn: Any = bridge.connectors["testnet"]
    await tn.remote_message("zoe", "zoe", "hi frank", receiver=frank.user_id)
    answer = await frank.wait_for_body(room, "hi frank", sender=ZOE)
    assert await was_encrypted(frank, room, answer.event_id)


async def test_dm_message_sent_before_the_bot_joined_is_told(
    make_bridge: BridgeFactory, nio_user: NioFactory
) -> None:
    """Element X sends a new DM's first message right away: encrypted for the members then,
    the bot's device never gets its key (and the client does not answer key requests). The
    sender is told it was not bridged, and what follows is."""
    bridge = await make_bridge(encryption={"allow": True})
    frank = await nio_user()
    mgmt = await encrypted_management_room(frank)
    await command(frank, mgmt, "login testnet frank-remote", "Logged in")

    # The messages first, the invite after: what a fast client does, without the race.
    room = await frank.create_encrypted_room(invite=[])
    early = [await frank.send_text(room, "are you there?"), await frank.send_text(room, "hello?")]
    await invite_direct(frank, room, ZOE)
    for event_id in early:
        assert await was_encrypted(frank, room, event_id)
    await frank.wait_member(room, BOT)
    told = await frank.wait_for_body(room, "could not decrypt", sender=ZOE)
    body = told.source["content"]["body"]
    assert frank.user_id in body and "your 2 messages sent before it joined" in body
    assert "Send them again" in body
    assert await was_encrypted(frank, room, told.event_id)
    assert not sent(bridge, "message", text="are you there?")()

    await frank.send_text(room, "are you there now?")
    await until(sent(bridge, "message", text="are you there now?"), 45)
    notices = [e for r, e in frank.events if r == room and "could not decrypt" in str(e.source)]
    assert len(notices) == 1


async def test_command_sent_before_the_bot_joined_is_told(
    make_bridge: BridgeFactory, nio_user: NioFactory
) -> None:
    await make_bridge(encryption={"allow": True})
    gail = await nio_user()
    room = await gail.create_encrypted_room(invite=[])
    early = await gail.send_text(room, "help")
    await invite_direct(gail, room, BOT)
    assert await was_encrypted(gail, room, early)
    told = await gail.wait_for_body(room, "could not decrypt your message", sender=BOT)
    assert await was_encrypted(gail, room, told.event_id)
    assert not [e for r, e in gail.events if "login <network>" in str(e.source)]
    await gail.send_text(room, "help")
    await gail.wait_for_body(room, "login <network>", sender=BOT)
