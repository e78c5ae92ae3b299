"""An XMPP bridge as a new admin sets it up: config.example.yaml with only the homeserver, the
appservice, the XMPP server's component address, the component's domain and secret and the MUC
service changed, the registration from ``-g``, the bridge run as ``python -m bridge -c
config.yaml``. Through Synapse: a MUC joined by alias (its history filling the portal), text,
corrections, reactions and replies both ways, a restart of the bridge (what Ann sent meanwhile
delivered once, corrections and replies after it still reach the right message), and every message
seen exactly once on each side."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from slixmpp import JID

from bridge.connector import escape_localpart
from tests.harness.example_config import AdminSetup
from tests.harness.prosody import ProsodyServer
from tests.harness.synapse import MatrixClient

from .conftest import COMPONENT, SECRET, XClient, unique

Event = dict[str, Any]
NS_REACTIONS = "{urn:xmpp:reactions:0}reactions"
NS_REPLY = "{urn:xmpp:reply:0}reply"


def body(e: Event) -> str:
    return str(e.get("content", {}).get("body", "")) if e["type"] == "m.room.message" else ""


def ghost_of(remote_id: str) -> str:
    return f"@xmpp_{escape_localpart(remote_id)}:localhost"


def alias_of(room: str) -> str:
    node, _, service = room.partition("@")
    return f"#xmpp_{escape_localpart(node)}@{escape_localpart(service)}:localhost"


def sid(msg: Any) -> str:
    """The MUC's XEP-0359 stanza-id of a groupchat message."""
    return str(msg.xml.find("{urn:xmpp:sid:0}stanza-id").attrib["id"])


def from_nick(room: str, nick: str) -> Callable[[Any], bool]:
    return lambda m: str(m["from"]) == f"{room}/{nick}"


@pytest.fixture
def admin(tmp_path: Path, prosody: ProsodyServer) -> Iterator[AdminSetup]:
    if not prosody.running:
        prosody.start()
    setup = AdminSetup(tmp_path)
    try:
        setup.write(
            {
                ("xmpp", "enabled"): True,
                ("xmpp", "server", "host"): prosody.host,
                ("xmpp", "server", "port"): prosody.component_port,
                ("xmpp", "component", "domain"): COMPONENT,
                ("xmpp", "component", "secret"): SECRET,
                ("xmpp", "muc_services"): [prosody.muc_domain],
            }
        )
        setup.start_synapse()
        yield setup
    finally:
        setup.close()


async def test_example_config_bridges_a_muc_through_a_restart(
    admin: AdminSetup, prosody: ProsodyServer, xclients: Callable[..., Any]
) -> None:
    assert admin.synapse is not None
    muc = f"{unique('room')}@{prosody.muc_domain}"
    alice: XClient = await xclients("alice")
    await alice.join(muc, "alice")
    # Said before the portal exists: the example's backfill_limit fills the new portal.
    alice.xmpp.send_message(mto=JID(muc), mbody="before the portal", mtype="groupchat")
    await alice.wait_message(lambda m: m["body"] == "before the portal")
    await admin.start_bridge()
    ann = admin.synapse.new_client("ann")
    try:
        await _scenario(admin, muc, alice, ann)
    finally:
        await ann.close()


def _reactions_from(alice: XClient, muc: str, since: int) -> Callable[[Any], bool]:
    return lambda m: (
        m.xml.find(NS_REACTIONS) is not None
        and from_nick(muc, "Ann")(m)
        and alice.messages.index(m) >= since
    )


async def _scenario(admin: AdminSetup, muc: str, alice: XClient, ann: MatrixClient) -> None:
    await ann.set_displayname("Ann")
    room = await ann.join(alias_of(muc))
    await alice.wait_presence(from_nick(muc, "Ann"), 30)
    ghost = ghost_of(f"{muc}/alice")
    early = await ann.wait_for_event(room, lambda e: body(e) == "before the portal", 30)
    assert early["sender"] == ghost

    # Text both ways.
    msg = alice.xmpp.make_message(mto=muc, mbody="hello matrix", mtype="groupchat")
    msg["id"] = msg["origin_id"]["id"] = unique("a")
    msg.send()
    hello = await ann.wait_for_event(room, lambda e: body(e) == "hello matrix", 30)
    assert hello["sender"] == ghost
    seen = await alice.wait_message(lambda m: m["body"] == "hello matrix")
    mine = await ann.send_text(room, "hello xmpp")
    first = await alice.wait_message(
        lambda m: m["body"] == "hello xmpp" and from_nick(muc, "Ann")(m), 30
    )

    # Corrections both ways.
    fix = alice.xmpp.make_message(mto=muc, mbody="hello matrix!", mtype="groupchat")
    fix["replace"]["id"] = msg["id"]
    fix.send()
    edit = await ann.wait_for_event(
        room, lambda e: e["content"].get("m.new_content", {}).get("body") == "hello matrix!", 30
    )
    assert edit["sender"] == ghost
    assert edit["content"]["m.relates_to"]["event_id"] == hello["event_id"]
    await ann.edit(room, mine, "hello xmpp!")
    corr = await alice.wait_message(lambda m: m["body"] == "hello xmpp!", 30)
    assert corr["replace"]["id"] == first["id"] and from_nick(muc, "Ann")(corr)

    # Reactions both ways.
    n = len(alice.messages)
    await ann.react(room, hello["event_id"], "👍")
    got = await alice.wait_message(_reactions_from(alice, muc, n), 30)
    assert got["reactions"]["id"] == sid(seen)
    assert got["reactions"].get_values(all_chars=True) == {"👍"}
    react = alice.xmpp.make_message(mto=muc, mtype="groupchat")
    react["reactions"]["id"] = sid(first)
    react["reactions"]["values"] = ["🎉"]
    react.send()
    reaction = await ann.wait_for_event(
        room, lambda e: e["type"] == "m.reaction" and e["sender"] != ann.user_id, 30
    )
    assert reaction["sender"] == ghost
    assert reaction["content"]["m.relates_to"]["event_id"] == mine

    # Replies both ways.
    await ann.reply(room, hello["event_id"], "nice to meet you")
    rep = await alice.wait_message(
        lambda m: m.xml.find(NS_REPLY) is not None and from_nick(muc, "Ann")(m), 30
    )
    assert rep["reply"]["id"] == sid(seen)
    assert rep["reply"].strip_fallback_content() == "nice to meet you"
    ans = alice.xmpp.make_message(mto=muc, mbody="", mtype="groupchat")
    ans["reply"]["id"] = sid(first)
    ans["reply"]["to"] = f"{muc}/Ann"
    ans["body"] = "likewise"
    ans["reply"].add_quoted_fallback("hello xmpp!", "Ann")
    ans.send()
    answer = await ann.wait_for_event(room, lambda e: body(e) == "likewise", 30)
    assert answer["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == mine

    # A restart: a clean stop on SIGTERM, Ann's occupant leaves and comes back.
    n = len(alice.presences)
    assert await admin.stop_bridge() == 0, admin.log_tail()
    await alice.wait_presence(
        lambda p: (
            alice.presences.index(p) >= n
            and p["type"] == "unavailable"
            and from_nick(muc, "Ann")(p)
        ),
        30,
    )
    n = len(alice.presences)
    # Synapse keeps what Matrix users send while the bridge is down, and delivers it after.
    await ann.send_text(room, "while the bridge was down")
    await admin.start_bridge()
    await alice.wait_presence(
        lambda p: (
            alice.presences.index(p) >= n
            and p["type"] != "unavailable"
            and from_nick(muc, "Ann")(p)
        ),
        60,
    )
    await alice.wait_message(
        lambda m: m["body"] == "while the bridge was down" and from_nick(muc, "Ann")(m), 60
    )
    # The mapping survived: corrections and replies reach the messages from before.
    fix = alice.xmpp.make_message(mto=muc, mbody="hello matrix!!", mtype="groupchat")
    fix["replace"]["id"] = msg["id"]
    fix.send()
    edit = await ann.wait_for_event(
        room, lambda e: e["content"].get("m.new_content", {}).get("body") == "hello matrix!!", 30
    )
    assert edit["content"]["m.relates_to"]["event_id"] == hello["event_id"]
    await ann.edit(room, mine, "hello xmpp!!")
    corr = await alice.wait_message(lambda m: m["body"] == "hello xmpp!!", 30)
    assert corr["replace"]["id"] == first["id"]
    n = len(alice.messages)
    await ann.reply(room, hello["event_id"], "still here")
    rep = await alice.wait_message(
        lambda m: m["body"].endswith("still here") and alice.messages.index(m) >= n, 30
    )
    assert rep["reply"]["id"] == sid(seen)
    alice.xmpp.send_message(mto=JID(muc), mbody="after the restart", mtype="groupchat")
    after = await ann.wait_for_event(room, lambda e: body(e) == "after the restart", 30)
    assert after["sender"] == ghost
    await ann.send_text(room, "last one")
    await alice.wait_message(lambda m: m["body"] == "last one" and from_nick(muc, "Ann")(m), 30)
    await asyncio.sleep(2)  # time for a late copy or a replay to show

    # Each message exactly once on each side.
    from_ann = [
        m["body"]
        for m in alice.messages
        if from_nick(muc, "Ann")(m) and m["body"] and m.xml.find(NS_REACTIONS) is None
    ]
    assert [b.rsplit("\n", 1)[-1] for b in from_ann] == [
        "hello xmpp",
        "hello xmpp!",
        "nice to meet you",
        "while the bridge was down",
        "hello xmpp!!",
        "still here",
        "last one",
    ], f"what XMPP saw from Ann: {from_ann}"
    reactions = [m for m in alice.messages if _reactions_from(alice, muc, 0)(m)]
    assert len(reactions) == 1, "Ann's reaction on XMPP"
    events = await ann.messages(room, 200)
    others = [(e["sender"], body(e)) for e in events if body(e) and e["sender"] != ann.user_id]
    assert others == [
        (ghost, "before the portal"),
        (ghost, "hello matrix"),
        (ghost, "* hello matrix!"),
        (ghost, "likewise"),
        (ghost, "* hello matrix!!"),
        (ghost, "after the restart"),
    ], f"messages of others in Matrix: {others}"
    assert len([e for e in events if e["type"] == "m.reaction"]) == 2
    assert "Traceback" not in admin.log_text(), admin.log_tail()
