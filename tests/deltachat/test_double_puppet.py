"""Double puppeting with Delta Chat, end to end: what a logged-in Matrix user writes from
another device of their Delta Chat account shows in Matrix as sent by the user themselves
(the bridge acting as them through the second registration), once, and the bridge sends
nothing of it back to Delta Chat."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from tests.conftest import DOUBLE_PUPPET_TOKEN
from tests.deltachat.conftest import DCBridge, Peer, Peers
from tests.deltachat.test_dm import body, contact_link, ghost
from tests.deltachat.test_group_features import join_group_portal
from tests.deltachat.test_other_devices import second_device
from tests.harness.synapse import MatrixClient, SynapseServer
from tests.helpers import command, new_user, until

SOURCE = "org.mimi.source"


async def test_the_users_other_device_speaks_as_the_user(
    dcbridge: DCBridge, synapse: SynapseServer, peers: Peers, alice: Peer, tmp_path: Path
) -> None:
    ben = new_user(synapse, "ben")
    await ben.set_displayname("Ben")
    await dcbridge.start(bridge={"double_puppet": {"as_token": DOUBLE_PUPPET_TOKEN}})
    group, link, room, mgmt = await join_group_portal(dcbridge, ben, alice, "Puppets")
    puppet = dcbridge.stack.add_user("puppet-" + ben.user_id[1:].split(":")[0], "ben-pw")
    await command(ben, mgmt, f"login deltachat {puppet} ben-pw", "Logged in")
    conn: Any = dcbridge.connector
    account = conn.accounts.account_of_user[ben.user_id]
    grpid = re.search(r"[&#]x=([^&]+)", link)
    assert grpid

    async def puppet_can_send() -> bool:
        chat = await conn.chats.chat_of_group(account, grpid.group(1))
        if chat is None:
            return False
        info = await conn.rpc.call("get_full_chat_by_id", account, chat)
        return bool(info["canSend"] and not info["isContactRequest"])

    since = alice.mark()
    await ben.send_text(room, "first, relayed")
    await alice.wait_message(lambda m: m["text"].endswith("> first, relayed"), since)
    await until(puppet_can_send, 90, "ben's account in the group")
    since = alice.mark()
    await ben.send_text(room, "in the group from matrix")
    await alice.wait_message(lambda m: m["text"] == "in the group from matrix", since)
    # A DM with alice from Ben's own address.
    await alice.join(await contact_link(ben, mgmt))
    dm = await ben.create_room(invite=[ghost(alice.addr)], is_direct=True)
    await until(lambda: _member(ben, dm, ghost(alice.addr)), 30, "ghost joined the DM")
    since = alice.mark()
    await ben.send_text(dm, "in the dm from matrix")
    got = await alice.wait_message(lambda m: m["text"] == "in the dm from matrix", since)
    await alice.call("accept_chat", got["chatId"])
    alice_dm = int(got["chatId"])
    phone = await second_device(dcbridge, peers, ben.user_id, puppet, tmp_path / "backup")
    phone_dm = int(
        await phone.call(
            "create_chat_by_contact_id", await phone.call("lookup_contact_id_by_addr", alice.addr)
        )
    )
    names = {
        c: (await phone.call("get_basic_chat_info", c))["name"]
        for c in await phone.call("get_chatlist_entries", None, None, None)
    }
    phone_group = next(c for c, n in names.items() if n == "Puppets")
    # From the phone: in Matrix as Ben himself, unmarked.
    since = alice.mark()
    await phone.send(phone_group, "in the group from my phone")
    await alice.wait_message(lambda m: m["text"] == "in the group from my phone", since)
    evt = await ben.wait_for_event(
        room, lambda e: body(e).endswith("in the group from my phone"), 45
    )
    assert evt["sender"] == ben.user_id
    assert body(evt) == "in the group from my phone"
    assert evt["content"][SOURCE] == "remote"
    # In the DM: Ben's too (the DM's ghost does not speak for him).
    await phone.send(phone_dm, "in the dm from my phone")
    await alice.wait_message(lambda m: m["text"] == "in the dm from my phone", since)
    mine = await ben.wait_for_event(dm, lambda e: body(e).endswith("in the dm from my phone"), 45)
    assert mine["sender"] == ben.user_id
    assert body(mine) == "in the dm from my phone"
    # Last messages from the phone: all before them has reached Matrix, and alice got each
    # message once (the bridge sent nothing of Ben's own back to Delta Chat).
    await phone.send(phone_group, "last in the group")
    await phone.send(phone_dm, "last in the dm")
    await ben.wait_for_event(room, lambda e: body(e) == "last in the group", 45)
    await ben.wait_for_event(dm, lambda e: body(e) == "last in the dm", 45)
    await alice.wait_message(lambda m: m["text"] == "last in the group", since)
    await alice.wait_message(lambda m: m["text"] == "last in the dm", since)
    await asyncio.sleep(2)
    got = [m["text"] for m in await alice.messages(group)]
    assert got.count("in the group from my phone") == 1
    assert got.count("in the group from matrix") == 1
    dm_got = [m["text"] for m in await alice.messages(alice_dm)]
    assert dm_got.count("in the dm from my phone") == 1
    assert dm_got.count("in the dm from matrix") == 1
    dm_texts = [body(e) for e in await ben.messages(dm, 100) if e["type"] == "m.room.message"]
    assert dm_texts.count("in the dm from my phone") == 1
    assert not [t for t in dm_texts if "(from their Delta Chat account)" in t]
    texts = [body(e) for e in await ben.messages(room, 100) if e["type"] == "m.room.message"]
    assert texts.count("in the group from my phone") == 1
    assert texts.count("in the group from matrix") == 1
    assert not [t for t in texts if "(from their Delta Chat account)" in t]
    await ben.close()


async def _member(user: MatrixClient, room: str, who: str) -> bool:
    return who in await user.joined_members(room)
