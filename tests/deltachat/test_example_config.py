"""A Delta Chat bridge as a new admin sets it up: config.example.yaml with only the homeserver, the
appservice, the bridge's mail account and the mail server changed (and the domains the example
names, example.org, replaced by the test's), the registration from ``-g``, the bridge run as
``python -m bridge -c config.yaml``. Through Synapse: a Delta Chat group joined by its alias, text,
edits, reactions and replies both ways, a restart of the bridge (what both sides sent meanwhile
delivered once, an edit and a reply after it still reach the right message), and every message seen
exactly once on each side."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.connector import escape_localpart
from tests.deltachat.conftest import Peer
from tests.harness.example_config import AdminSetup
from tests.harness.mailstack import DOMAIN, MailStack
from tests.harness.synapse import MatrixClient
from tests.helpers import command, management_room, until

Event = dict[str, Any]


def body(e: Event) -> str:
    return str(e.get("content", {}).get("body", "")) if e["type"] == "m.room.message" else ""


def ghost(addr: str) -> str:
    return f"@deltachat_{escape_localpart(addr)}:localhost"


@pytest.fixture
def admin(tmp_path: Path, mailstack: MailStack) -> Iterator[AdminSetup]:
    setup = AdminSetup(tmp_path)
    address = mailstack.add_user("examplebridge", "examplebridge-pw")
    try:
        setup.write(
            {
                ("deltachat", "enabled"): True,
                # The example's /var/lib/mimi-bridge is the system's; the test keeps its own.
                ("deltachat", "accounts_dir"): str(tmp_path / "deltachat"),
                ("deltachat", "account", "address"): address,
                ("deltachat", "account", "password"): "examplebridge-pw",
                ("deltachat", "imap", "host"): mailstack.host,
                ("deltachat", "imap", "port"): mailstack.imap_port,
                # The test mail stack speaks no TLS (the example's comment lists plain).
                ("deltachat", "imap", "security"): "plain",
                ("deltachat", "smtp", "host"): mailstack.host,
                ("deltachat", "smtp", "port"): mailstack.smtp_port,
                ("deltachat", "smtp", "security"): "plain",
                ("deltachat", "policy", "allowed_senders"): [f"*@{DOMAIN}"],
                ("deltachat", "policy", "dm_receiver"): f"@admin:{setup.domain}",
            }
        )
        setup.start_synapse()
        yield setup
    finally:
        setup.close()


async def test_example_config_bridges_a_group_through_a_restart(
    admin: AdminSetup, alice: Peer
) -> None:
    assert admin.synapse is not None
    await admin.start_bridge()
    dan = admin.synapse.new_client("dan")
    try:
        await _scenario(admin, alice, dan)
    finally:
        await dan.close()


async def _text(peer: Peer, msg_id: int, text: str) -> bool:
    return bool((await peer.call("get_message", msg_id))["text"] == text)


async def _reactions_are(peer: Peer, msg_id: int, emoji: list[str]) -> bool:
    got = await peer.call("get_message_reactions", msg_id) or {}
    return sorted(r["emoji"] for r in got.get("reactions") or []) == emoji


async def _scenario(admin: AdminSetup, alice: Peer, dan: MatrixClient) -> None:
    await dan.set_displayname("Dan")
    mgmt = await management_room(dan)
    group = int(await alice.call("create_group_chat", "Example room", False))
    link = str(await alice.call("get_chat_securejoin_qr_code", group))
    grpid = re.search(r"[&#]x=([^&]+)", link)
    assert grpid
    alias = f"#deltachat_{escape_localpart('g.' + grpid.group(1))}:localhost"
    reply = await command(dan, mgmt, f"join deltachat {link}", "Invited you")
    assert alias in reply
    room = await dan.join(alias)

    # Text both ways: Dan has no Delta Chat account, the bridge's relays him.
    hello_id = await alice.send(group, "hello matrix")
    hello = await dan.wait_for_event(room, lambda e: body(e) == "hello matrix", 60)
    assert hello["sender"] == ghost(alice.addr)
    since = alice.mark()
    mine = await dan.send_text(room, "hello delta")
    relayed = await alice.wait_message(lambda m: m["text"].endswith("hello delta"), since, 60)
    prefix = relayed["text"].removesuffix("hello delta")
    assert relayed["chatId"] == group and prefix == "<Dan> "

    # Edits both ways.
    await alice.call("send_edit_request", hello_id, "hello matrix!")
    edit = await dan.wait_for_event(
        room, lambda e: e["content"].get("m.new_content", {}).get("body") == "hello matrix!", 60
    )
    assert edit["content"]["m.relates_to"]["event_id"] == hello["event_id"]
    await dan.edit(room, mine, "hello delta!")
    await until(lambda: _text(alice, relayed["id"], f"{prefix}hello delta!"), 60, "the edit")

    # Reactions both ways.
    await dan.react(room, hello["event_id"], "👍")
    await until(lambda: _reactions_are(alice, hello_id, ["👍"]), 60, "Dan's reaction")
    await alice.call("send_reaction", relayed["id"], ["🎉"])
    party = await dan.wait_for_event(
        room, lambda e: e["type"] == "m.reaction" and e["sender"] == ghost(alice.addr), 60
    )
    assert party["content"]["m.relates_to"] == {
        "rel_type": "m.annotation",
        "event_id": mine,
        "key": "🎉",
    }

    # Replies both ways.
    since = alice.mark()
    await dan.reply(room, hello["event_id"], "nice to meet you")
    rep = await alice.wait_message(lambda m: m["text"].endswith("nice to meet you"), since, 60)
    assert rep["quote"] and rep["quote"]["text"] == "hello matrix!"
    await alice.send(group, "likewise", quotedMessageId=relayed["id"])
    answer = await dan.wait_for_event(room, lambda e: body(e) == "likewise", 60)
    assert answer["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == mine

    # A restart: a clean stop on SIGTERM, the ids kept.
    assert await admin.stop_bridge() == 0, admin.log_tail()
    # What either side sends while the bridge is down waits (Synapse, the mailbox) and
    # arrives once after it.
    since = alice.mark()
    await dan.send_text(room, "from matrix meanwhile")
    await alice.send(group, "from delta chat meanwhile")
    await asyncio.sleep(2)
    await admin.start_bridge()
    await alice.wait_message(lambda m: m["text"].endswith("from matrix meanwhile"), since, 60)
    await dan.wait_for_event(room, lambda e: body(e) == "from delta chat meanwhile", 60)
    await alice.call("send_edit_request", hello_id, "hello matrix!!")
    edit = await dan.wait_for_event(
        room, lambda e: e["content"].get("m.new_content", {}).get("body") == "hello matrix!!", 60
    )
    assert edit["content"]["m.relates_to"]["event_id"] == hello["event_id"]
    await dan.edit(room, mine, "hello delta!!")
    await until(lambda: _text(alice, relayed["id"], f"{prefix}hello delta!!"), 60, "late edit")
    since = alice.mark()
    await dan.reply(room, hello["event_id"], "still here")
    rep = await alice.wait_message(lambda m: m["text"].endswith("still here"), since, 60)
    assert rep["quote"] and rep["quote"]["text"] == "hello matrix!!"
    await alice.send(group, "after the restart", quotedMessageId=relayed["id"])
    after = await dan.wait_for_event(room, lambda e: body(e) == "after the restart", 60)
    assert after["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == mine
    since = alice.mark()
    await dan.send_text(room, "last one")
    await alice.wait_message(lambda m: m["text"].endswith("last one"), since, 60)
    await asyncio.sleep(3)  # time for a late copy or a replay to show

    # Each message exactly once on each side.
    texts = [m["text"] for m in await alice.messages(group) if m["fromId"] != 1 and m["text"]]
    relay_texts = [t for t in texts if t.startswith(prefix)]
    assert relay_texts == [
        f"{prefix}hello delta!!",
        f"{prefix}nice to meet you",
        f"{prefix}from matrix meanwhile",
        f"{prefix}still here",
        f"{prefix}last one",
    ], f"what Delta Chat shows from the bridge: {texts}"
    events = await dan.messages(room, 200)
    others = [body(e) for e in events if body(e) and e["sender"] == ghost(alice.addr)]
    assert [b for b in others if not b.startswith("* ")] == [
        "hello matrix",
        "likewise",
        "from delta chat meanwhile",
        "after the restart",
    ], f"messages of alice in Matrix: {others}"
    assert len([b for b in others if b.startswith("* ")]) == 2, f"alice's edits: {others}"
    reactions = [e for e in events if e["type"] == "m.reaction"]
    assert len(reactions) == 2, f"reactions in Matrix: {reactions}"
    assert "Traceback" not in admin.log_text(), admin.log_tail()
