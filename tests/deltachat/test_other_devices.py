"""A logged-in Matrix user's Delta Chat account also used on a phone, end to end: the phone is
a second device of the bridge's copy of the account (its backup imported into another core),
and what it writes reaches the Matrix portals once, marked as the user's; what the user writes
from Matrix still appears once."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from tests.deltachat.conftest import DCBridge, Peer, Peers
from tests.deltachat.test_dm import body, contact_link, ghost
from tests.deltachat.test_group_features import join_group_portal
from tests.harness.synapse import MatrixClient, SynapseServer
from tests.helpers import command, new_user, until

BOT = "@mimibot:localhost"


async def second_device(
    dcbridge: DCBridge, peers: Peers, user_id: str, addr: str, workdir: Path
) -> Peer:
    """Another device of the user's account: the bridge's copy exported as a backup and
    imported into the peers' core, sending a copy of its messages to itself."""
    conn: Any = dcbridge.connector
    account = conn.accounts.account_of_user[user_id]
    await asyncio.to_thread(workdir.mkdir)
    await conn.rpc.call("export_backup", account, str(workdir), None)
    backups = await asyncio.to_thread(lambda: list(workdir.iterdir()))
    assert len(backups) == 1, backups
    acc = int(await peers.rpc.call("add_account"))
    await peers.rpc.call("import_backup", acc, str(backups[0]), None)
    await peers.rpc.call("set_config", acc, "bcc_self", "1")
    await peers.rpc.call("start_io", acc)
    return Peer(peers, acc, addr, "phone")


async def test_messages_from_the_users_other_device_show_in_matrix(
    dcbridge: DCBridge, synapse: SynapseServer, peers: Peers, alice: Peer, tmp_path: Path
) -> None:
    ben = new_user(synapse, "ben")
    await ben.set_displayname("Ben")
    await dcbridge.start()
    # A group portal, then Ben logs in: his own account joins the group.
    group, link, room, mgmt = await join_group_portal(dcbridge, ben, alice, "Phones")
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

    # His first message is relayed while the bridge adds his own account to the group.
    since = alice.mark()
    await ben.send_text(room, "first, relayed")
    await alice.wait_message(lambda m: m["text"].endswith("> first, relayed"), since)
    await until(puppet_can_send, 90, "ben's account in the group")
    since = alice.mark()
    await ben.send_text(room, "in the group from matrix")
    got = await alice.wait_message(lambda m: m["text"] == "in the group from matrix", since)
    assert (await alice.call("get_contact", got["fromId"]))["address"].lower() == puppet
    # A DM with alice from Ben's own address (the bridge's account met alice first).
    await alice.join(await contact_link(ben, mgmt))
    dm = await ben.create_room(invite=[ghost(alice.addr)], is_direct=True)
    await until(lambda: _member(ben, dm, ghost(alice.addr)), 30, "ghost joined the DM")
    since = alice.mark()
    await ben.send_text(dm, "in the dm from matrix")
    got = await alice.wait_message(lambda m: m["text"] == "in the dm from matrix", since)
    await alice.call("accept_chat", got["chatId"])
    # His phone: the same account, from a backup.
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
    phone_group = next(c for c, n in names.items() if n == "Phones")
    label = "Ben (from their Delta Chat account)"
    # In the group (seen by the bridge's account as Ben's message, not sent by the bridge).
    since = alice.mark()
    await phone.send(phone_group, "in the group from my phone")
    seen = await alice.wait_message(lambda m: m["text"] == "in the group from my phone", since)
    assert seen["chatId"] == group
    evt = await ben.wait_for_event(
        room, lambda e: body(e) == f"{label}: in the group from my phone", 45
    )
    assert evt["sender"] == BOT
    assert (
        evt["content"]["formatted_body"] == f"<strong>{label}</strong>: in the group from my phone"
    )
    # In the DM (the account's copy to itself), by the DM's ghost, marked.
    await phone.send(phone_dm, "in the dm from my phone")
    await alice.wait_message(lambda m: m["text"] == "in the dm from my phone", since)
    mine = await ben.wait_for_event(
        dm, lambda e: body(e) == f"{label}: in the dm from my phone", 45
    )
    assert mine["sender"] == ghost(alice.addr)
    # Replies to it from Matrix quote the phone's message on Delta Chat.
    since = alice.mark()
    await ben.reply(dm, mine["event_id"], "replying to my phone")
    reply = await alice.wait_message(lambda m: m["text"] == "replying to my phone", since)
    assert reply["quote"] and reply["quote"]["text"] == "in the dm from my phone"
    # Last messages from the phone: all before them has reached Matrix.
    await phone.send(phone_group, "last in the group")
    await phone.send(phone_dm, "last in the dm")
    await ben.wait_for_event(room, lambda e: body(e) == f"{label}: last in the group", 45)
    await ben.wait_for_event(dm, lambda e: body(e) == f"{label}: last in the dm", 45)
    texts = [body(e) for e in await ben.messages(room, 100) if e["type"] == "m.room.message"]
    assert texts.count(f"{label}: in the group from my phone") == 1
    assert texts.count("in the group from matrix") == 1
    assert not [t for t in texts if t.endswith(": in the group from matrix")]
    dm_texts = [body(e) for e in await ben.messages(dm, 100) if e["type"] == "m.room.message"]
    assert dm_texts.count(f"{label}: in the dm from my phone") == 1
    assert dm_texts.count("in the dm from matrix") == 1
    assert dm_texts.count("replying to my phone") == 1
    assert not [t for t in dm_texts if t.endswith("from matrix") and t.startswith(label)]
    await ben.close()


async def _member(user: MatrixClient, room: str, who: str) -> bool:
    return who in await user.joined_members(room)
