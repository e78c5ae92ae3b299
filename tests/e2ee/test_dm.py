"""An encrypted DM a Matrix user opens with a ghost: the ghost brings the bot in (only the bot
has a device, and clients share their keys with members only), the bot's device decrypts her
messages, and the ghost's answers are encrypted by it."""

from __future__ import annotations

from typing import Any

from tests.conftest import BridgeFactory
from tests.e2ee.conftest import NioFactory
from tests.e2ee.helpers import BOT, command, encrypted_management_room, was_encrypted
from tests.helpers import sent, until

ZOE = "@testnet_zoe:localhost"


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
