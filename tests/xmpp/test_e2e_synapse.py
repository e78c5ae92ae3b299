"""End to end: a real Synapse, a real Prosody and the bridge core with the XMPP connector.

Matrix users are :class:`MatrixClient` s talking to Synapse; XMPP users are real slixmpp
clients (:class:`XClient`) logged in to Prosody (c2s on loopback). The bridge runs in-process
(``make_bridge``) with the XMPP connector as an XEP-0114 component. Each test checks what the
people on both sides see: MUC portals joined by alias and by command, occupants and nicks,
messages with styling, corrections, reactions, retractions, moderation, replies, chat states,
markers, media, DMs both ways, subjects, kicks, MAM history, and restarts of Prosody and of
the bridge.

Prosody comes from Debian (``apt-get install prosody``), its MUC's XEP-0425 moderation from
Debian's community modules (``apt-get install prosody-modules``); a missing server or module
fails these tests with that hint, it never skips them.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from slixmpp import JID
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET

from bridge.bridge import Bridge
from bridge.connector import escape_localpart
from tests.conftest import BridgeFactory
from tests.harness.prosody import ProsodyServer
from tests.harness.synapse import MatrixClient, SynapseServer
from tests.helpers import command, management_room, until

from .conftest import COMPONENT, Moderated, XClient, connector_config, moderated, unique
from .test_pep_avatars import publish_avatar, subscribe_both_ways

BOT = "@mimibot:localhost"
Event = dict[str, Any]
NS_REACTIONS = "{urn:xmpp:reactions:0}reactions"
NS_RETRACT = "{urn:xmpp:message-retract:1}retract"
NS_DISPLAYED = "{urn:xmpp:chat-markers:0}displayed"
NS_REPLY = "{urn:xmpp:reply:0}reply"
NS_AVATAR_METADATA = "urn:xmpp:avatar:metadata"
# A 1x1 PNG.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


# --- helpers -----------------------------------------------------------------------------------


def body(evt: Event) -> str:
    return str(evt.get("content", {}).get("body", ""))


def ghost_of(remote_id: str) -> str:
    """The Matrix id of an XMPP user's (or anonymous occupant's) ghost."""
    return f"@xmpp_{escape_localpart(remote_id)}:localhost"


def alias_of(room: str) -> str:
    node, _, service = room.partition("@")
    return f"#xmpp_{escape_localpart(node)}@{escape_localpart(service)}:localhost"


def puppet_jid(user_id: str) -> str:
    """The JID of a Matrix user on the component (XEP-0106 escaping)."""
    local, _, server = user_id[1:].partition(":")
    return f"{local}\\40{server}@{COMPONENT}"


def sid(msg: Any) -> str:
    """The MUC's XEP-0359 stanza-id of a groupchat message."""
    return str(msg.xml.find("{urn:xmpp:sid:0}stanza-id").attrib["id"])


def from_nick(room: str, nick: str) -> Callable[[Any], bool]:
    return lambda m: str(m["from"]) == f"{room}/{nick}"


async def matrix_user(synapse: SynapseServer, name: str) -> MatrixClient:
    """A Matrix user whose display name is ``name``."""
    client = synapse.new_client(unique(name.lower()))
    await client.set_displayname(name)
    return client


async def upload(client: MatrixClient, data: bytes, mimetype: str, filename: str) -> str:
    headers = {"Authorization": f"Bearer {client.token}", "Content-Type": mimetype}
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{client.url}/_matrix/media/v3/upload",
            params={"filename": filename},
            data=data,
            headers=headers,
        ) as r,
    ):
        assert r.status == 200, await r.text()
        return str((await r.json())["content_uri"])


async def download(client: MatrixClient, mxc: str) -> bytes:
    server, _, media_id = mxc[6:].partition("/")
    url = f"{client.url}/_matrix/client/v1/media/download/{quote(server)}/{quote(media_id)}"
    async with (
        aiohttp.ClientSession() as s,
        s.get(url, headers={"Authorization": f"Bearer {client.token}"}) as r,
    ):
        assert r.status == 200, await r.text()
        return await r.read()


async def fetch(url: str) -> tuple[int, bytes]:
    """What any XMPP client gets from a link: a plain GET, no credentials."""
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.read()


_syncs = itertools.count()


async def sync_now(client: MatrixClient) -> dict[str, Any]:
    """A fresh initial /sync (Synapse caches identical /sync requests for minutes, so each
    one carries a filter of its own)."""
    fresh = json.dumps({"room": {"not_rooms": [f"!sync{next(_syncs)}:localhost"]}})
    _, sync = await client.request(
        "GET", "/_matrix/client/v3/sync", params={"timeout": "0", "filter": fresh}
    )
    return dict(sync)


async def ephemeral(client: MatrixClient, room: str) -> list[Event]:
    sync = await sync_now(client)
    joined = sync.get("rooms", {}).get("join", {}).get(room, {})
    return list(joined.get("ephemeral", {}).get("events", []))


async def typing_users(client: MatrixClient, room: str) -> set[str]:
    for e in await ephemeral(client, room):
        if e["type"] == "m.typing":
            return set(e["content"]["user_ids"])
    return set()


async def read_by(client: MatrixClient, room: str, event_id: str) -> set[str]:
    for e in await ephemeral(client, room):
        if e["type"] == "m.receipt" and event_id in e["content"]:
            return set(e["content"][event_id].get("m.read", {}))
    return set()


async def give_power(bridge: Bridge, room: str, user_id: str, level: int = 100) -> None:
    """The bot created the portal; let a Matrix user moderate it. (The bridge also writes
    power levels, for XMPP owners and moderators: wait until this change has stuck.)"""
    await bridge.queues.drain()
    for _ in range(50):
        levels = await bridge.hs.get_state(room, "m.room.power_levels") or {}
        if levels.get("users", {}).get(user_id) == level:
            return
        levels.setdefault("users", {})[user_id] = level
        await bridge.hs.send_state(room, "m.room.power_levels", levels)
        await asyncio.sleep(0.1)
    raise AssertionError(f"could not give {user_id} power level {level}")


async def members(client: MatrixClient, room: str) -> set[str]:
    return set(await client.joined_members(room))


def new_room(prosody: ProsodyServer, prefix: str = "room") -> str:
    return f"{unique(prefix)}@{prosody.muc_domain}"


@pytest.fixture
async def xmpp_bridge(
    make_bridge: BridgeFactory, prosody: ProsodyServer
) -> AsyncIterator[Callable[..., Any]]:
    """Starts the bridge with the XMPP connector on the session's Prosody."""

    async def start(xmpp: dict[str, Any] | None = None, **extra: Any) -> Bridge:
        if not prosody.running:
            prosody.start()
        cfg = connector_config(prosody, media={"allow_private_addresses": True}, **(xmpp or {}))
        return await make_bridge(connectors={"xmpp": cfg}, **extra)

    yield start


@pytest.fixture
async def xusers(prosody: ProsodyServer) -> AsyncIterator[Callable[[str], Any]]:
    made: list[XClient] = []

    async def make(prefix: str, plugins: tuple[str, ...] = ()) -> XClient:
        if not prosody.running:
            prosody.start()
        c = await XClient(prosody, unique(prefix), plugins=plugins).connect()
        made.append(c)
        return c

    yield make
    for c in made:
        await c.close()


async def portal_with(
    xmpp_bridge: Any,
    synapse: SynapseServer,
    prosody: ProsodyServer,
    xusers: Any,
    name: str = "Ann",
    **bridge_extra: Any,
) -> tuple[Bridge, str, XClient, MatrixClient, str]:
    """A running bridge; an XMPP user ``alice`` who created a MUC; a Matrix user ``name``
    who joined it through its alias. Returns (bridge, muc, alice, matrix user, room id)."""
    bridge = await xmpp_bridge(**bridge_extra)
    muc = new_room(prosody)
    alice = await xusers("alice")
    await alice.join(muc, "alice")
    user = await matrix_user(synapse, name)
    room = await user.join(alias_of(muc))
    await alice.wait_presence(from_nick(muc, name))
    return bridge, muc, alice, user, room


# --- MUC portals and occupants -----------------------------------------------------------------


async def test_join_by_alias_and_messages_both_ways(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    _bridge, muc, alice, ann, room = await portal_with(xmpp_bridge, synapse, prosody, xusers)
    # The portal is a bridged room: m.bridge state names the MUC.
    info = await ann.get_state(room, "m.bridge", f"mimi-bridge/xmpp/{muc}")
    assert info and info["protocol"]["id"] == "xmpp" and info["channel"]["id"] == muc
    # The XMPP user is in the Matrix room as a ghost named by the nick; she created the MUC,
    # so as its owner her ghost has power level 100.
    occupant = ghost_of(f"{muc}/alice")
    await until(lambda: _has_member(ann, room, occupant), what="alice's ghost joined")
    assert (await ann.get_profile(occupant))["displayname"] == "alice"
    await until(lambda: _power_of(ann, room, occupant, 100), what="owner's power level")
    # Ann's occupant is a real entity: disco#info (XEP-0030) answers with the features its
    # presence advertises through caps (XEP-0115).
    pres = await alice.wait_presence(from_nick(muc, "Ann"))
    caps = pres.xml.find("{http://jabber.org/protocol/caps}c")
    assert caps is not None
    disco: Any = await alice.xmpp.plugin["xep_0030"].get_info(
        jid=JID(puppet_jid(ann.user_id) + "/matrix"), node=f"{caps.get('node')}#{caps.get('ver')}"
    )
    features = set(disco["disco_info"]["features"])
    assert {"urn:xmpp:reactions:0", "urn:xmpp:message-correct:0", "urn:xmpp:reply:0"} <= features
    assert ("client", "pc", "Matrix user", None) in {
        (c, t, n, lang) for c, t, lang, n in disco["disco_info"]["identities"]
    }
    # XMPP -> Matrix, with XEP-0393 styling as HTML, from alice's ghost.
    alice.xmpp.send_message(mto=JID(muc), mbody="hello *matrix* _world_", mtype="groupchat")
    evt = await ann.wait_for_event(room, lambda e: body(e) == "hello *matrix* _world_")
    assert evt["sender"] == occupant
    assert evt["content"]["formatted_body"] == "hello <strong>matrix</strong> <em>world</em>"
    # Matrix -> XMPP, HTML as styling, from Ann's occupant.
    await ann.send_text(
        room,
        "hi alice, see code",
        format="org.matrix.custom.html",
        formatted_body="<b>hi</b> alice, see <code>code</code>",
    )
    got = await alice.wait_message(lambda m: m["body"] == "*hi* alice, see `code`")
    assert str(got["from"]) == f"{muc}/Ann" and got["type"] == "groupchat"
    # An emote.
    await ann.send_event(room, "m.room.message", {"msgtype": "m.emote", "body": "waves"})
    await alice.wait_message(lambda m: m["body"] == "/me waves" and from_nick(muc, "Ann")(m))
    alice.xmpp.send_message(mto=JID(muc), mbody="/me nods", mtype="groupchat")
    emote = await ann.wait_for_event(room, lambda e: body(e) == "nods")
    assert emote["content"]["msgtype"] == "m.emote"
    await ann.close()


async def test_join_command_nick_conflicts_and_leave(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    await xmpp_bridge()
    muc = new_room(prosody)
    bea = await xusers("bea")
    await bea.join(muc, "Bea")
    # A Matrix user also called Bea joins with the `join` command in her management room.
    mbea = await matrix_user(synapse, "Bea")
    mgmt = await management_room(mbea)
    reply = await command(mbea, mgmt, f"join xmpp {muc}", "Invited you")
    assert alias_of(muc) in reply
    room = await mbea.join(alias_of(muc))
    # Nick taken on XMPP: she becomes "Bea [m]"; a second Matrix Bea becomes "Bea [m2]".
    await bea.wait_presence(from_nick(muc, "Bea [m]"))
    other = await matrix_user(synapse, "Bea")
    await other.join(alias_of(muc))
    await bea.wait_presence(from_nick(muc, "Bea [m2]"))
    await mbea.send_text(room, "which Bea am I?")
    got = await bea.wait_message(lambda m: m["body"] == "which Bea am I?")
    assert str(got["from"]) == f"{muc}/Bea [m]"
    # Leaving the Matrix room takes her out of the MUC (and only her).
    n = len(bea.presences)
    await mbea.leave(room)
    gone = await bea.wait_presence(
        lambda p: bea.presences.index(p) >= n and p["type"] == "unavailable"
    )
    assert str(gone["from"]) == f"{muc}/Bea [m]"
    occupants = bea.xmpp.plugin["xep_0045"].get_roster(muc)
    assert "Bea [m2]" in occupants and "Bea [m]" not in occupants
    await mbea.close()
    await other.close()


async def test_membership_of_xmpp_users_is_mirrored(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    _bridge, muc, _alice, ann, room = await portal_with(xmpp_bridge, synapse, prosody, xusers)
    carl = await xusers("carl")
    await carl.join(muc, "carl")
    ghost = ghost_of(f"{muc}/carl")
    await until(lambda: _has_member(ann, room, ghost), what="carl's ghost joined")
    # A nick change: the occupant's new nick names its ghost (an anonymous occupant's ghost is
    # keyed by its nick, so the new ghost takes the old one's place).
    await carl.xmpp.plugin["xep_0045"].set_self_nick(JID(muc), "carlos", timeout=10)
    renamed = ghost_of(f"{muc}/carlos")
    await until(lambda: _has_member(ann, room, renamed), what="renamed ghost joined")
    await until(lambda: _not_member(ann, room, ghost), what="old ghost left")
    assert (await ann.get_profile(renamed))["displayname"] == "carlos"
    carl.xmpp.send_message(mto=JID(muc), mbody="new name, same me", mtype="groupchat")
    evt = await ann.wait_for_event(room, lambda e: body(e) == "new name, same me")
    assert evt["sender"] == renamed
    carl.xmpp.plugin["xep_0045"].leave_muc(JID(muc), "carlos", "bye")
    await until(lambda: _not_member(ann, room, renamed), what="carl's ghost left")
    await ann.close()


# --- message features ------------------------------------------------------------------------


async def test_corrections_reactions_retractions_replies_both_ways(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    _bridge, muc, alice, ann, room = await portal_with(xmpp_bridge, synapse, prosody, xusers)
    ghost = ghost_of(f"{muc}/alice")

    # XMPP: a message, then its XEP-0308 correction -> a Matrix edit of that event.
    msg = alice.xmpp.make_message(mto=muc, mbody="helo", mtype="groupchat")
    msg["id"] = msg["origin_id"]["id"] = unique("a")
    msg.send()
    original = await ann.wait_for_event(room, lambda e: body(e) == "helo")
    seen = await alice.wait_message(lambda m: m["body"] == "helo")
    fix = alice.xmpp.make_message(mto=muc, mbody="hello", mtype="groupchat")
    fix["replace"]["id"] = msg["id"]
    fix.send()
    edit = await ann.wait_for_event(
        room, lambda e: e["content"].get("m.new_content", {}).get("body") == "hello"
    )
    assert edit["sender"] == ghost
    assert edit["content"]["m.relates_to"] == {
        "rel_type": "m.replace",
        "event_id": original["event_id"],
    }

    # XMPP: XEP-0444 reactions (on the MUC stanza-id) -> Matrix annotations.
    react = alice.xmpp.make_message(mto=muc, mtype="groupchat")
    react["reactions"]["id"] = sid(seen)
    react["reactions"]["values"] = ["👍"]
    react.send()
    reaction = await ann.wait_for_event(room, lambda e: e["type"] == "m.reaction")
    assert reaction["sender"] == ghost
    assert reaction["content"]["m.relates_to"] == {
        "rel_type": "m.annotation",
        "event_id": original["event_id"],
        "key": "👍",
    }
    # Removing the reaction (an empty set) redacts it.
    unreact = alice.xmpp.make_message(mto=muc, mtype="groupchat")
    unreact["reactions"]["id"] = sid(seen)
    unreact["reactions"]["values"] = []
    unreact.send()
    await until(lambda: _redacted(ann, room, reaction["event_id"]), what="reaction removed")

    # Matrix: a message, its edit, a reaction and its removal, and a retraction.
    mine = await ann.send_text(room, "from matrix")
    first = await alice.wait_message(lambda m: m["body"] == "from matrix")
    await ann.edit(room, mine, "from matrix!")
    corr = await alice.wait_message(lambda m: m["body"] == "from matrix!")
    assert corr["replace"]["id"] == first["origin_id"]["id"] == first["id"]
    assert str(corr["from"]) == f"{muc}/Ann"
    heart = await ann.react(room, original["event_id"], "❤️")
    got_r = await alice.wait_message(
        lambda m: m.xml.find(NS_REACTIONS) is not None and from_nick(muc, "Ann")(m)
    )
    assert got_r["reactions"]["id"] == sid(seen)
    assert got_r["reactions"].get_values(all_chars=True) == {"❤️"}
    n = len(alice.messages)
    await ann.redact(room, heart)
    got_r2 = await alice.wait_message(
        lambda m: (
            m.xml.find(NS_REACTIONS) is not None
            and from_nick(muc, "Ann")(m)
            and alice.messages.index(m) >= n
        )
    )
    assert got_r2["reactions"]["id"] == sid(seen)
    assert got_r2["reactions"].get_values(all_chars=True) == set()

    # Matrix reply (with the Matrix fallback quoting alice's ghost) -> XEP-0461 reply whose
    # body has neither the Matrix fallback nor any Matrix id.
    await ann.send_text(
        room,
        f"> <{ghost}> hello\n\nagreed",
        format="org.matrix.custom.html",
        formatted_body=(
            f'<mx-reply><blockquote><a href="https://matrix.to/#/{ghost}">{ghost}</a>'
            "<br>hello</blockquote></mx-reply>agreed"
        ),
        **{"m.relates_to": {"m.in_reply_to": {"event_id": original["event_id"]}}},
    )
    rep = await alice.wait_message(
        lambda m: m.xml.find(NS_REPLY) is not None and from_nick(muc, "Ann")(m)
    )
    assert rep["reply"]["id"] == sid(seen) and rep["reply"]["to"] == f"{muc}/alice"
    assert rep["reply"].strip_fallback_content() == "agreed"
    assert "@" not in rep["body"] and ":localhost" not in rep["body"] and "mx-reply" not in str(rep)

    # XMPP reply to Ann's message -> Matrix reply to her event, fallback stripped.
    ans = alice.xmpp.make_message(mto=muc, mbody="", mtype="groupchat")
    ans["reply"]["id"] = sid(first)
    ans["reply"]["to"] = f"{muc}/Ann"
    ans["body"] = "indeed"
    ans["reply"].add_quoted_fallback("from matrix!", "Ann")
    ans.send()
    answer = await ann.wait_for_event(room, lambda e: body(e) == "indeed")
    assert answer["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == mine

    # Matrix redaction of her own message -> XEP-0424 retraction of its stanza-id.
    await ann.redact(room, mine)
    retr = await alice.wait_message(lambda m: m.xml.find(NS_RETRACT) is not None)
    assert _attr(retr, NS_RETRACT, "id") == sid(first)
    assert str(retr["from"]) == f"{muc}/Ann"

    # XMPP retraction -> the Matrix event is redacted.
    rt = alice.xmpp.make_message(mto=muc, mtype="groupchat", mbody="retracted")
    rt["retract"]["id"] = sid(seen)
    rt.send()
    await until(lambda: _redacted(ann, room, original["event_id"]), what="retraction")
    await ann.close()


async def test_long_messages(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    _bridge, muc, alice, ann, room = await portal_with(xmpp_bridge, synapse, prosody, xusers)
    # A Matrix message longer than XMPP takes goes out as a preview and a link to the text.
    text = "".join(f"line {i} of a very long paste\n" for i in range(2000))
    await ann.send_text(room, text)
    got = await alice.wait_message(lambda m: from_nick(muc, "Ann")(m) and "line 0" in m["body"])
    assert len(got["body"].encode()) < 32768
    link = got["body"].rsplit("full message: ", 1)[1].rstrip(")")
    status, data = await fetch(link)
    assert status == 200 and data.decode() == text
    await ann.close()


async def test_moderation_both_ways(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    bridge, muc, alice, ann, room = await portal_with(xmpp_bridge, synapse, prosody, xusers)
    carl = await xusers("carl")
    await carl.join(muc, "carl")
    await until(lambda: _has_member(ann, room, ghost_of(f"{muc}/carl")), what="carl's ghost")
    # The MUC offers XEP-0425 message moderation (Prosody's mod_muc_moderation, which speaks
    # the older urn:xmpp:message-moderate:0 form).
    info = await alice.xmpp.plugin["xep_0030"].get_info(jid=JID(muc), timeout=10)
    assert "urn:xmpp:message-moderate:0" in info["disco_info"]["features"]

    # XMPP -> Matrix: alice owns the MUC and moderates a message of Ann's, one of carl's and
    # one of her own. Each Matrix event is redacted by alice's ghost (her MUC role gives it
    # the power to) with the moderator's reason.
    mine = await ann.send_text(room, "from matrix")
    anns = await alice.wait_message(lambda m: m["body"] == "from matrix")
    carl.xmpp.send_message(mto=JID(muc), mbody="from carl", mtype="groupchat")
    carls = await alice.wait_message(lambda m: m["body"] == "from carl")
    carl_evt = await ann.wait_for_event(room, lambda e: body(e) == "from carl")
    alice.xmpp.send_message(mto=JID(muc), mbody="from alice", mtype="groupchat")
    alices = await alice.wait_message(lambda m: m["body"] == "from alice")
    alice_evt = await ann.wait_for_event(room, lambda e: body(e) == "from alice")
    await alice.moderate(muc, sid(anns), "rude")
    await alice.moderate(muc, sid(carls), "spam")
    await alice.moderate(muc, sid(alices), "oops")
    for event_id, redactor, reason in (
        (mine, ghost_of(f"{muc}/alice"), "rude"),
        (carl_evt["event_id"], ghost_of(f"{muc}/alice"), "spam"),
        (alice_evt["event_id"], ghost_of(f"{muc}/alice"), "oops"),
    ):
        await until(lambda e=event_id: _redacted(ann, room, e), what=f"{reason}: redacted")
        because = (await ann.get_event(room, event_id))["unsigned"]["redacted_because"]
        assert because["sender"] == redactor, reason
        assert because["content"].get("reason") == reason

    # Matrix -> XMPP: Ann may redact others' events in the Matrix room, but her occupant is a
    # participant in the MUC, so the MUC refuses to retract alice's message: Ann is told.
    await give_power(bridge, room, ann.user_id, 100)
    alice.xmpp.send_message(mto=JID(muc), mbody="delete me", mtype="groupchat")
    kept = await carl.wait_message(lambda m: m["body"] == "delete me")
    evt = await ann.wait_for_event(room, lambda e: body(e) == "delete me")
    await ann.redact(room, evt["event_id"], "spam")
    notice = await ann.wait_for_event(room, lambda e: e["sender"] == BOT and "deletion" in body(e))
    assert "not delivered" in body(notice) and "only its moderators" in body(notice)
    assert "forbidden" in body(notice) and "Matrix only" in body(notice)
    # Once alice makes Ann's occupant a moderator, Ann's deletion retracts the message for
    # everyone in the MUC: moderated by her occupant, with her reason.
    await alice.xmpp.plugin["xep_0045"].set_role(muc, "Ann", "moderator")
    await alice.wait_presence(
        lambda p: from_nick(muc, "Ann")(p) and p["muc"]["role"] == "moderator"
    )
    alice.xmpp.send_message(mto=JID(muc), mbody="delete me too", mtype="groupchat")
    gone = await carl.wait_message(lambda m: m["body"] == "delete me too")
    evt = await ann.wait_for_event(room, lambda e: body(e) == "delete me too")
    await ann.redact(room, evt["event_id"], "off topic")
    for xmpp_user in (alice, carl):
        got = await xmpp_user.wait_message(
            lambda m: (mod := moderated(m)) is not None and mod.target == sid(gone)
        )
        assert str(got["from"]) == muc
        assert moderated(got) == Moderated(sid(gone), f"{muc}/Ann", "off topic")
    # Nothing retracted the message the MUC refused to, and the MUC's announcement of Ann's
    # moderation did not come back as a second redaction: once a later message is in Matrix,
    # her redaction is the only one of that event.
    assert not [m for m in carl.messages if (mod := moderated(m)) and mod.target == sid(kept)]
    alice.xmpp.send_message(mto=JID(muc), mbody="after", mtype="groupchat")
    await ann.wait_for_event(room, lambda e: body(e) == "after")
    redactions = [
        e
        for e in await ann.messages(room)
        if e["type"] == "m.room.redaction"
        and evt["event_id"] in (e.get("redacts"), e["content"].get("redacts"))
    ]
    assert [e["sender"] for e in redactions] == [ann.user_id]
    await ann.close()


async def test_typing_and_read_markers_both_ways(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    _bridge, muc, alice, ann, room = await portal_with(xmpp_bridge, synapse, prosody, xusers)
    ghost = ghost_of(f"{muc}/alice")
    # XEP-0085 composing -> the ghost types in Matrix; paused -> it stops.
    st = alice.xmpp.make_message(mto=muc, mtype="groupchat")
    st["chat_state"] = "composing"
    st.send()
    await until(lambda: _typing(ann, room, ghost), what="ghost typing")
    st = alice.xmpp.make_message(mto=muc, mtype="groupchat")
    st["chat_state"] = "paused"
    st.send()
    await until(lambda: _not_typing(ann, room, ghost), what="ghost stopped typing")
    # Matrix typing -> composing / paused from Ann's occupant.
    await ann.typing(room, True)
    await alice.wait_message(lambda m: from_nick(muc, "Ann")(m) and m["chat_state"] == "composing")
    await ann.typing(room, False)
    await alice.wait_message(lambda m: from_nick(muc, "Ann")(m) and m["chat_state"] == "paused")
    # Matrix read receipt -> XEP-0333 displayed marker on the MUC stanza-id.
    alice.xmpp.send_message(mto=JID(muc), mbody="read me", mtype="groupchat")
    evt = await ann.wait_for_event(room, lambda e: body(e) == "read me")
    seen = await alice.wait_message(lambda m: m["body"] == "read me")
    await ann.read_receipt(room, evt["event_id"])
    shown = await alice.wait_message(
        lambda m: m.xml.find(NS_DISPLAYED) is not None and from_nick(muc, "Ann")(m)
    )
    assert _attr(shown, NS_DISPLAYED, "id") == sid(seen)
    # XMPP displayed marker -> a Matrix read receipt of alice's ghost.
    mine = await ann.send_text(room, "did you read this?")
    got = await alice.wait_message(lambda m: m["body"] == "did you read this?")
    assert got.xml.find("{urn:xmpp:chat-markers:0}markable") is not None
    mark = alice.xmpp.make_message(mto=muc, mtype="groupchat")
    mark["displayed"]["id"] = sid(got)
    mark.send()
    await until(lambda: _read_by(ann, room, mine, ghost), what="ghost read receipt")
    await ann.close()


async def test_media_both_ways(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    _bridge, muc, alice, ann, room = await portal_with(xmpp_bridge, synapse, prosody, xusers)
    # Matrix image -> an XEP-0066 link that the XMPP client can fetch without credentials.
    mxc = await upload(ann, PNG, "image/png", "dot.png")
    await ann.send_event(
        room,
        "m.room.message",
        {"msgtype": "m.image", "body": "dot.png", "url": mxc, "info": {"mimetype": "image/png"}},
    )
    got = await alice.wait_message(lambda m: m["oob"]["url"] != "" and from_nick(muc, "Ann")(m))
    url = got["oob"]["url"]
    assert got["body"] == url
    assert await fetch(url) == (200, PNG)
    # XMPP: an HTTP upload (XEP-0363) shared as an XEP-0066 link -> a Matrix image whose
    # file is in the homeserver's content repository.
    data = PNG + b"\0" * 64
    alice.xmpp.register_plugin("xep_0363")
    link = await alice.xmpp.plugin["xep_0363"].upload_file(
        "photo.png",
        size=len(data),
        content_type="image/png",
        input_file=io.BytesIO(data),
        domain=JID(prosody.domain),
        timeout=10,
    )
    share = alice.xmpp.make_message(mto=muc, mbody=link, mtype="groupchat")
    share["oob"]["url"] = link
    share.send()
    img = await ann.wait_for_event(
        room,
        lambda e: e["content"].get("msgtype") == "m.image" and e["sender"] != ann.user_id,
    )
    assert img["sender"] == ghost_of(f"{muc}/alice")
    assert img["content"]["url"].startswith("mxc://localhost/")
    assert img["content"]["info"]["mimetype"] == "image/png"
    assert await download(ann, img["content"]["url"]) == data
    await ann.close()


async def test_subject_and_topic_both_ways(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    bridge, muc, alice, ann, room = await portal_with(xmpp_bridge, synapse, prosody, xusers)
    # XMPP subject -> Matrix topic.
    alice.xmpp.plugin["xep_0045"].set_subject(muc, "XMPP subject")
    await until(lambda: _topic_is(ann, room, "XMPP subject"), what="topic from subject")
    # Matrix topic while Ann's occupant may not change the subject: she is told.
    await give_power(bridge, room, ann.user_id, 50)
    await ann.send_state(room, "m.room.topic", "", {"topic": "Matrix topic"})
    refused = await ann.wait_for_event(
        room, lambda e: e["sender"] == BOT and "subject" in body(e).lower()
    )
    assert "forbidden" in body(refused) or "not allowed" in body(refused), body(refused)
    # Once the room's owner makes her a moderator, the topic becomes the subject.
    await alice.xmpp.plugin["xep_0045"].set_role(muc, "Ann", "moderator")
    await ann.send_state(room, "m.room.topic", "", {"topic": "Matrix topic 2"})
    subj = await alice.wait_message(lambda m: m["subject"] == "Matrix topic 2")
    assert str(subj["from"]) == f"{muc}/Ann"
    await ann.close()


async def test_power_levels_become_muc_ranks(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    bridge, muc, alice, ann, room = await portal_with(xmpp_bridge, synapse, prosody, xusers)
    connector: Any = bridge.connectors["xmpp"]
    carl = await xusers("carl")
    await carl.join(muc, "carl")
    carl_ghost = ghost_of(f"{muc}/carl")
    await until(lambda: _has_member(ann, room, carl_ghost), what="carl's ghost")
    # alice makes Ann's occupant an owner of the MUC: Ann gets power 100 in Matrix.
    ann_jid = connector.puppet_jid(ann.user_id).bare
    await alice.xmpp.plugin["xep_0045"].set_affiliation(muc, "owner", jid=ann_jid)
    await until(lambda: _power_of(ann, room, ann.user_id, 100), what="Ann's power")

    async def set_level(user_id: str, level: int) -> None:
        levels = await ann.get_state(room, "m.room.power_levels") or {}
        levels.setdefault("users", {})[user_id] = level
        await ann.send_state(room, "m.room.power_levels", "", levels)

    def rank_of(nick: str, key: str, value: str, since: int) -> Callable[[Any], bool]:
        return lambda p: (
            alice.presences.index(p) >= since
            and str(p["from"]) == f"{muc}/{nick}"
            and p["muc"][key] == value
        )

    # Matrix power 50 -> moderator; back to 0 -> participant.
    n = len(alice.presences)
    await set_level(carl_ghost, 50)
    await alice.wait_presence(rank_of("carl", "role", "moderator", n))
    n = len(alice.presences)
    await set_level(carl_ghost, 0)
    await alice.wait_presence(rank_of("carl", "role", "participant", n))
    # A Matrix user's power 100 makes their occupant an owner.
    ben = await matrix_user(synapse, "Ben")
    await ben.join(room)
    await alice.wait_presence(from_nick(muc, "Ben"))
    n = len(alice.presences)
    await set_level(ben.user_id, 100)
    await alice.wait_presence(rank_of("Ben", "affiliation", "owner", n))


async def test_kicks_both_ways(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    bridge, muc, alice, ann, room = await portal_with(xmpp_bridge, synapse, prosody, xusers)
    carl = await xusers("carl")
    await carl.join(muc, "carl")
    carl_ghost = ghost_of(f"{muc}/carl")
    await until(lambda: _has_member(ann, room, carl_ghost), what="carl's ghost")
    # Matrix -> XMPP: a Matrix moderator kicks carl's ghost; carl is kicked from the MUC.
    await give_power(bridge, room, ann.user_id, 100)
    await alice.xmpp.plugin["xep_0045"].set_role(muc, "Ann", "moderator")
    await ann.kick(room, carl_ghost, "off topic")
    kicked = await carl.wait_presence(
        lambda p: p["type"] == "unavailable" and 307 in p["muc"]["status_codes"]
    )
    assert kicked["muc"]["item"]["reason"] == "off topic"
    # XMPP -> Matrix: the owner kicks a second Matrix user's occupant; she leaves the Matrix
    # room with the reason and is told in it.
    ben = await matrix_user(synapse, "Ben")
    await ben.join(room)
    await alice.wait_presence(from_nick(muc, "Ben"))
    await alice.xmpp.plugin["xep_0045"].set_role(muc, "Ben", "none", reason="spam")
    await until(lambda: _not_member(ann, room, ben.user_id), what="Ben kicked in Matrix")
    kick = await ann.wait_for_event(
        room,
        lambda e: (
            e["type"] == "m.room.member"
            and e["state_key"] == ben.user_id
            and e["content"].get("membership") == "leave"
        ),
    )
    assert "spam" in kick["content"].get("reason", "")
    # Matrix -> XMPP: a Matrix moderator kicks another Matrix user from the portal: only that
    # user's occupant leaves the MUC.
    cleo = await matrix_user(synapse, "Cleo")
    await cleo.join(room)
    await alice.wait_presence(from_nick(muc, "Cleo"))
    n = len(alice.presences)
    await ann.kick(room, cleo.user_id, "wrong room")
    left = await alice.wait_presence(
        lambda p: alice.presences.index(p) >= n and p["type"] == "unavailable"
    )
    assert str(left["from"]) == f"{muc}/Cleo" and left["status"] == "wrong room"
    await asyncio.sleep(0.5)
    assert "Ann" in alice.xmpp.plugin["xep_0045"].get_roster(JID(muc))
    await ann.close()
    await ben.close()
    await cleo.close()


async def test_link_an_existing_room(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    bridge = await xmpp_bridge()
    muc = new_room(prosody)
    alice = await xusers("alice")
    await alice.join(muc, "alice")
    ivy = await matrix_user(synapse, "Ivy")
    room = await ivy.create_room(
        name="Ivy's room",
        invite=[BOT],
        power_level_content_override={"users": {BOT: 100}},
    )
    await until(lambda: bridge.hs.is_joined(room, BOT), what="bot joined")
    await ivy.send_text(room, f"!mimi link xmpp {muc}")
    await ivy.wait_for_event(room, lambda e: e["sender"] == BOT and "Linked" in body(e))
    # Ivy is in the MUC now, and messages cross both ways.
    await alice.wait_presence(from_nick(muc, "Ivy"))
    await ivy.send_text(room, "plumbed")
    got = await alice.wait_message(lambda m: m["body"] == "plumbed")
    assert str(got["from"]) == f"{muc}/Ivy"
    alice.xmpp.send_message(mto=JID(muc), mbody="hello plumbed room", mtype="groupchat")
    evt = await ivy.wait_for_event(room, lambda e: body(e) == "hello plumbed room")
    assert evt["sender"] == ghost_of(f"{muc}/alice")
    # Unlinking takes her occupant out of the MUC.
    n = len(alice.presences)
    await ivy.send_text(room, "!mimi unlink")
    await ivy.wait_for_event(room, lambda e: e["sender"] == BOT and "Unlinked" in body(e))
    await alice.wait_presence(
        lambda p: (
            alice.presences.index(p) >= n
            and p["type"] == "unavailable"
            and from_nick(muc, "Ivy")(p)
        )
    )
    await ivy.close()


async def test_bans_both_ways(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    bridge, muc, alice, ann, room = await portal_with(xmpp_bridge, synapse, prosody, xusers)
    muc_plugin = alice.xmpp.plugin["xep_0045"]
    # The MUC's owner makes Ann an admin; the room's Matrix admin makes her one too.
    await muc_plugin.set_affiliation(muc, "admin", jid=puppet_jid(ann.user_id))
    await give_power(bridge, room, ann.user_id, 100)
    carl = await xusers("carl")
    await carl.join(muc, "carl")
    # Ann's occupant is a moderator: it sees real JIDs, so carl's ghost is his JID's.
    carl_ghost = ghost_of(carl.jid)
    await until(lambda: _has_member(ann, room, carl_ghost), what="carl's ghost")
    # Matrix -> XMPP: banning carl's ghost bans carl's JID from the MUC.
    await ann.ban(room, carl_ghost, "troll")
    gone = await carl.wait_presence(
        lambda p: p["type"] == "unavailable" and 301 in p["muc"]["status_codes"]
    )
    assert gone["muc"]["item"]["reason"] == "troll"
    outcasts = await muc_plugin.get_affiliation_list(muc, "outcast")
    assert JID(carl.jid) in outcasts
    # XMPP -> Matrix: the owner bans a Matrix user's occupant: banned in Matrix too.
    ben = await matrix_user(synapse, "Ben")
    await ben.join(room)
    await alice.wait_presence(from_nick(muc, "Ben"))
    await muc_plugin.set_affiliation(muc, "outcast", jid=puppet_jid(ben.user_id), reason="spam")
    ban = await ann.wait_for_event(
        room,
        lambda e: (
            e["type"] == "m.room.member"
            and e["state_key"] == ben.user_id
            and e["content"].get("membership") == "ban"
        ),
    )
    assert "spam" in ban["content"].get("reason", "")
    await ann.close()
    await ben.close()


async def test_presence_both_ways(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    _bridge, muc, alice, ann, _room = await portal_with(xmpp_bridge, synapse, prosody, xusers)
    # Matrix presence -> the occupant's presence in the MUC.
    n = len(alice.presences)
    await ann.set_presence("unavailable", "lunch")
    away = await alice.wait_presence(
        lambda p: alice.presences.index(p) >= n and from_nick(muc, "Ann")(p) and p["show"] == "away"
    )
    assert away["status"] == "lunch"
    # An XMPP contact's presence -> the ghost's presence in a DM.
    dm = await ann.create_room(invite=[ghost_of(alice.jid)], is_direct=True)
    await until(lambda: _has_member(ann, dm, ghost_of(alice.jid)), what="DM ghost")
    await ann.send_text(dm, "hi")
    await alice.wait_message(lambda m: m["body"] == "hi")
    alice.xmpp.send_presence(pto=JID(puppet_jid(ann.user_id)), pshow="away", pstatus="busy")

    async def ghost_away() -> bool:
        state = await ann.get_presence(ghost_of(alice.jid))
        return state.get("presence") == "unavailable" and state.get("status_msg") == "busy"

    await until(ghost_away, what="ghost presence")
    await ann.close()


async def test_login_with_own_xmpp_account(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    await xmpp_bridge()
    muc = new_room(prosody)
    alice = await xusers("alice")
    await alice.join(muc, "alice")
    name = unique("jo")
    prosody.register_user(name, "jo-secret")
    jo = await matrix_user(synapse, "Jo")
    mgmt = await management_room(jo)
    await command(jo, mgmt, f"login xmpp {name}@{prosody.domain} jo-secret", "Logged in as")
    room = await jo.join(alias_of(muc))
    # Jo speaks as her own account: her occupant is joined from it.
    await alice.wait_presence(from_nick(muc, "Jo"))
    await jo.send_text(room, "it's really me")
    got = await alice.wait_message(lambda m: m["body"] == "it's really me")
    assert str(got["from"]) == f"{muc}/Jo"
    # A chat to her own account reaches her in a Matrix DM.
    alice.xmpp.send_message(mto=JID(f"{name}@{prosody.domain}"), mbody="hi Jo", mtype="chat")
    invite = await until(lambda: _invites(jo), what="DM invite")
    dm = next(iter(invite))
    await jo.join(dm)
    evt = await jo.wait_for_event(dm, lambda e: body(e) == "hi Jo")
    assert evt["sender"] == ghost_of(alice.jid)
    await jo.close()


async def test_messages_from_the_users_other_xmpp_client_show_in_matrix(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    """Jo is logged in with her own JID and also uses a phone client on it. What she writes
    from the phone (reflected by the MUC, carbon-copied in a chat) appears once in Matrix,
    sent by the bot and marked as hers; what she writes from Matrix appears once too."""
    await xmpp_bridge()
    muc = new_room(prosody)
    alice = await xusers("alice")
    await alice.join(muc, "alice")
    name = unique("jo")
    prosody.register_user(name, "jo-secret")
    jo = await matrix_user(synapse, "Jo")
    mgmt = await management_room(jo)
    await command(jo, mgmt, f"login xmpp {name}@{prosody.domain} jo-secret", "Logged in as")
    room = await jo.join(alias_of(muc))
    await alice.wait_presence(from_nick(muc, "Jo"))
    # Her phone: the same account, another resource, carbons on, in the MUC under her nick.
    phone = XClient(prosody, name, password="jo-secret", plugins=("xep_0280",))
    await phone.connect()
    try:
        await phone.xmpp.plugin["xep_0280"].enable(timeout=5)
        await phone.join(muc, "Jo")
        label = "Jo (from their XMPP account)"
        # In the MUC: shown once, by the bot, marked in body and HTML.
        sent = phone.xmpp.make_message(
            mto=JID(muc), mbody="hello from my *phone*", mtype="groupchat"
        )
        sent["id"] = sent["origin_id"]["id"] = unique("phone")
        sent.send()
        evt = await jo.wait_for_event(room, lambda e: body(e).endswith("hello from my *phone*"))
        assert evt["sender"] == BOT
        assert body(evt) == f"{label}: hello from my *phone*"
        assert evt["content"]["msgtype"] == "m.text"
        assert evt["content"]["formatted_body"] == (
            f"<strong>{label}</strong>: hello from my <strong>phone</strong>"
        )
        at_alice = await alice.wait_message(lambda m: m["body"] == "hello from my *phone*")
        # A correction from the phone edits it, still marked; a Matrix reply refers to it.
        fix = phone.xmpp.make_message(mto=JID(muc), mbody="hello from my phone!", mtype="groupchat")
        fix["replace"]["id"] = sent["id"]
        fix.send()
        edit = await jo.wait_for_event(
            room, lambda e: e["content"].get("m.relates_to", {}).get("rel_type") == "m.replace"
        )
        assert edit["sender"] == BOT
        assert edit["content"]["m.relates_to"]["event_id"] == evt["event_id"]
        assert edit["content"]["m.new_content"]["body"] == f"{label}: hello from my phone!"
        await jo.reply(room, evt["event_id"], "replying to my phone")
        reply = await alice.wait_message(lambda m: m["body"].endswith("replying to my phone"))
        assert _attr(reply, NS_REPLY, "id") == sid(at_alice)
        # A reaction from the phone: a marked notice replying to the message; taking the
        # reaction back removes the notice.
        alice.xmpp.send_message(mto=JID(muc), mbody="react to this", mtype="groupchat")
        hers = await jo.wait_for_event(room, lambda e: body(e) == "react to this")
        seen = await phone.wait_message(lambda m: m["body"] == "react to this")
        react = phone.xmpp.make_message(mto=JID(muc), mtype="groupchat")
        react["reactions"]["id"] = sid(seen)
        react["reactions"]["values"] = ["👍"]
        react.send()
        note = await jo.wait_for_event(room, lambda e: body(e) == f"{label} reacted with 👍")
        assert note["sender"] == BOT and note["content"]["msgtype"] == "m.notice"
        assert note["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == hers["event_id"]
        unreact = phone.xmpp.make_message(mto=JID(muc), mtype="groupchat")
        unreact["reactions"]["id"] = sid(seen)
        unreact["reactions"]["values"] = []
        unreact.send()
        await until(lambda: _redacted(jo, room, note["event_id"]), what="reaction notice removed")
        # From Matrix: once in Matrix (its reflection is recognised as the bridge's own).
        await jo.send_text(room, "from matrix")
        await alice.wait_message(lambda m: m["body"] == "from matrix")
        await phone.wait_message(lambda m: m["body"] == "from matrix")
        # A chat from the phone to alice: its carbon opens Jo's DM with alice, marked.
        phone.xmpp.send_message(mto=JID(alice.jid), mbody="hi alice, from my phone", mtype="chat")
        await alice.wait_message(lambda m: m["body"] == "hi alice, from my phone")
        invite = await until(lambda: _invites(jo), what="DM invite")
        dm = next(iter(invite))
        await jo.join(dm)
        mine = await jo.wait_for_event(dm, lambda e: body(e).endswith("hi alice, from my phone"))
        assert body(mine) == f"{label}: hi alice, from my phone"
        assert mine["sender"] == BOT
        alice.xmpp.send_message(mto=JID(name + "@" + prosody.domain), mbody="hi Jo", mtype="chat")
        answer = await jo.wait_for_event(dm, lambda e: body(e) == "hi Jo")
        assert answer["sender"] == ghost_of(alice.jid)
        # From Matrix in the DM: alice gets it, the phone its carbon, Matrix shows it once.
        await jo.send_text(dm, "dm from matrix")
        await alice.wait_message(lambda m: m["body"] == "dm from matrix")
        await phone.wait_message(lambda m: m.xml.find("{urn:xmpp:carbons:2}sent") is not None)
        # A last message from the phone in each room: everything before it is in Matrix.
        phone.xmpp.send_message(mto=JID(muc), mbody="last in the room", mtype="groupchat")
        phone.xmpp.send_message(mto=JID(alice.jid), mbody="last in the dm", mtype="chat")
        await jo.wait_for_event(room, lambda e: body(e) == f"{label}: last in the room")
        await jo.wait_for_event(dm, lambda e: body(e) == f"{label}: last in the dm")
        texts = [body(e) for e in await jo.messages(room) if e["type"] == "m.room.message"]
        assert texts.count(f"{label}: hello from my *phone*") == 1
        assert texts.count("from matrix") == 1
        assert not [t for t in texts if t.endswith(": from matrix")]
        dm_texts = [body(e) for e in await jo.messages(dm) if e["type"] == "m.room.message"]
        assert dm_texts.count(f"{label}: hi alice, from my phone") == 1
        assert dm_texts.count("dm from matrix") == 1
        assert not [t for t in dm_texts if t.endswith(": dm from matrix")]
        # A retraction from the phone deletes its message in Matrix.
        retract = phone.xmpp.make_message(mto=JID(muc), mtype="groupchat")
        retract["retract"]["id"] = sid(at_alice)
        retract.send()
        await until(lambda: _redacted(jo, room, evt["event_id"]), what="phone's retraction")
    finally:
        await phone.close()
    await jo.close()


# --- direct messages --------------------------------------------------------------------------


async def test_dm_by_inviting_a_ghost(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    await xmpp_bridge()
    alice = await xusers("alice")
    ann = await matrix_user(synapse, "Ann")
    ghost = ghost_of(alice.jid)
    room = await ann.create_room(invite=[ghost], is_direct=True, preset="trusted_private_chat")
    await until(lambda: _has_member(ann, room, ghost), what="ghost accepted the DM")
    mine = await ann.send_text(room, "hi alice, it's Ann")
    got = await alice.wait_message(lambda m: m["body"] == "hi alice, it's Ann")
    assert got["type"] == "chat"
    assert JID(str(got["from"])).bare == puppet_jid(ann.user_id)
    ann_jid = JID(puppet_jid(ann.user_id))
    hello = alice.xmpp.make_message(mto=ann_jid, mbody="hi Ann!", mtype="chat")
    hello["id"] = hello["origin_id"]["id"] = unique("dm")
    hello.send()
    answer = await ann.wait_for_event(room, lambda e: body(e) == "hi Ann!")
    assert answer["sender"] == ghost
    # Typing in a DM, both ways.
    st = alice.xmpp.make_message(mto=ann_jid, mtype="chat")
    st["chat_state"] = "composing"
    st.send()
    await until(lambda: _typing(ann, room, ghost), what="DM typing")
    await ann.typing(room, True)
    await alice.wait_message(lambda m: m["type"] == "chat" and m["chat_state"] == "composing")
    # A correction and a reaction in a DM: both refer to the sender's own message id.
    fix = alice.xmpp.make_message(mto=ann_jid, mbody="hi Ann!!", mtype="chat")
    fix["replace"]["id"] = hello["id"]
    fix.send()
    edit = await ann.wait_for_event(
        room, lambda e: e["content"].get("m.new_content", {}).get("body") == "hi Ann!!"
    )
    assert edit["content"]["m.relates_to"]["event_id"] == answer["event_id"]
    await ann.react(room, answer["event_id"], "👋")
    react = await alice.wait_message(lambda m: m.xml.find(NS_REACTIONS) is not None)
    assert react["reactions"]["id"] == hello["id"]
    assert react["reactions"].get_values(all_chars=True) == {"👋"}
    # Matrix edit and redaction of Ann's DM message: a correction and a retraction.
    await ann.edit(room, mine, "hi alice, it's Ann!")
    corr = await alice.wait_message(lambda m: m["body"] == "hi alice, it's Ann!")
    assert corr["replace"]["id"] == got["id"]
    await ann.redact(room, mine)
    retr = await alice.wait_message(lambda m: m.xml.find(NS_RETRACT) is not None)
    assert _attr(retr, NS_RETRACT, "id") == got["id"]
    await ann.close()


async def test_dm_from_xmpp_opens_a_matrix_dm(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    await xmpp_bridge()
    carl = await xusers("carl")
    ben = await matrix_user(synapse, "Ben")
    msg = carl.xmpp.make_message(mto=puppet_jid(ben.user_id), mbody="hello Ben", mtype="chat")
    msg["request_receipt"] = True
    msg.send()
    # Ben is invited to a DM with carl's ghost, created by the first message.
    invite = await until(lambda: _invites(ben), what="DM invite")
    room = next(iter(invite))
    assert invite[room].get("is_direct") is True
    await ben.join(room)
    evt = await ben.wait_for_event(room, lambda e: body(e) == "hello Ben")
    assert evt["sender"] == ghost_of(carl.jid)
    # The XEP-0184 receipt is answered once the message is in Matrix.
    await carl.wait_message(lambda m: m.xml.find("{urn:xmpp:receipts}received") is not None)
    await ben.send_text(room, "hello carl")
    got = await carl.wait_message(lambda m: m["body"] == "hello carl")
    assert JID(str(got["from"])).bare == puppet_jid(ben.user_id)
    # A message to a JID that is no Matrix user bounces with an error.
    carl.xmpp.send_message(mto=f"nobody\\40localhost@{COMPONENT}", mbody="?", mtype="chat")
    err = await carl.wait_message(lambda m: m["type"] == "error")
    assert err["error"]["condition"] == "item-not-found"
    await ben.close()


# --- history and restarts ----------------------------------------------------------------------


async def test_mam_history_fills_a_new_portal(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    await xmpp_bridge(backfill_limit=3)
    muc = new_room(prosody, "hist")
    alice = await xusers("alice")
    await alice.join(muc, "alice")
    for i in range(5):
        alice.xmpp.send_message(mto=JID(muc), mbody=f"earlier {i}", mtype="groupchat")
    await alice.wait_message(lambda m: m["body"] == "earlier 4")
    ann = await matrix_user(synapse, "Ann")
    room = await ann.join(alias_of(muc))
    await ann.wait_for_event(room, lambda e: body(e) == "earlier 4")
    history = [e for e in await ann.messages(room) if e["type"] == "m.room.message"]
    assert [body(e) for e in history] == ["earlier 2", "earlier 3", "earlier 4"]
    assert {e["sender"] for e in history} == {ghost_of(f"{muc}/alice")}
    # Live messages follow the history, once.
    alice.xmpp.send_message(mto=JID(muc), mbody="now", mtype="groupchat")
    await ann.wait_for_event(room, lambda e: body(e) == "now")
    bodies = [body(e) for e in await ann.messages(room) if e["type"] == "m.room.message"]
    assert bodies == ["earlier 2", "earlier 3", "earlier 4", "now"]
    await ann.close()


async def test_prosody_restart(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    bridge, muc, alice, ann, room = await portal_with(xmpp_bridge, synapse, prosody, xusers)
    ben = await matrix_user(synapse, "Ben")
    await ben.join(room)
    await alice.wait_presence(from_nick(muc, "Ben"))
    connector: Any = bridge.connectors["xmpp"]
    connects = connector.component.connects
    await asyncio.to_thread(prosody.stop)
    await alice.close()
    await until(lambda: not connector.component.ready.is_set(), what="component lost")
    # What Ann says during the outage is kept, and she is told.
    await ann.send_text(room, "said during the outage")
    await ann.wait_for_event(
        room, lambda e: e["sender"] == BOT and "not reachable" in body(e), timeout=20
    )
    prosody.start()
    await until(lambda: connector.component.connects > connects, what="component reconnected")
    # The MUC is gone with the restart; a new XMPP user finds both puppets back in it.
    dora = await xusers("dora")

    async def both_back() -> bool:
        await asyncio.sleep(0.2)
        return {"Ann", "Ben"} <= set(dora.xmpp.plugin["xep_0045"].get_roster(muc) or [])

    # Joining with recent history: the message queued during the outage was delivered once
    # the occupants were back (as history, or live if it comes after the join).
    await dora.xmpp.plugin["xep_0045"].join_muc_wait(JID(muc), "dora", maxstanzas=20, timeout=10)
    await until(both_back, what="puppets rejoined")
    queued = await dora.wait_message(lambda m: m["body"] == "said during the outage")
    assert str(queued["from"]) == f"{muc}/Ann"
    await ann.send_text(room, "still here")
    got = await dora.wait_message(lambda m: m["body"] == "still here")
    assert str(got["from"]) == f"{muc}/Ann"
    dora.xmpp.send_message(mto=muc, mbody="welcome back", mtype="groupchat")
    evt = await ann.wait_for_event(room, lambda e: body(e) == "welcome back")
    # Ann's occupant recreated the room, so it sees real JIDs now.
    assert evt["sender"] in (ghost_of(f"{muc}/dora"), ghost_of(dora.jid))
    await ann.close()
    await ben.close()


async def test_bridge_restart_keeps_the_mapping(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    bridge, muc, alice, ann, room = await portal_with(xmpp_bridge, synapse, prosody, xusers)
    msg = alice.xmpp.make_message(mto=muc, mbody="before restart", mtype="groupchat")
    msg["id"] = msg["origin_id"]["id"] = unique("pre")
    msg.send()
    original = await ann.wait_for_event(room, lambda e: body(e) == "before restart")
    mine = await ann.send_text(room, "mine before restart")
    first = await alice.wait_message(lambda m: m["body"] == "mine before restart")
    n = len(alice.presences)
    await bridge.stop()
    # Ann's occupant leaves with the bridge and comes back with it.
    await alice.wait_presence(
        lambda p: (
            alice.presences.index(p) >= n
            and p["type"] == "unavailable"
            and from_nick(muc, "Ann")(p)
        )
    )
    n = len(alice.presences)
    await xmpp_bridge()
    await alice.wait_presence(
        lambda p: (
            alice.presences.index(p) >= n
            and p["type"] != "unavailable"
            and from_nick(muc, "Ann")(p)
        )
    )
    # An XMPP correction of the pre-restart message edits the right Matrix event.
    fix = alice.xmpp.make_message(mto=muc, mbody="before restart (fixed)", mtype="groupchat")
    fix["replace"]["id"] = msg["id"]
    fix.send()
    edit = await ann.wait_for_event(
        room,
        lambda e: e["content"].get("m.new_content", {}).get("body") == "before restart (fixed)",
    )
    assert edit["content"]["m.relates_to"]["event_id"] == original["event_id"]
    # And a Matrix edit of Ann's pre-restart message corrects the right XMPP message.
    await ann.edit(room, mine, "mine, edited after restart")
    corr = await alice.wait_message(lambda m: m["body"] == "mine, edited after restart")
    assert corr["replace"]["id"] == first["id"]
    await ann.close()


# --- predicates --------------------------------------------------------------------------------


def _attr(stanza: Any, tag: str, name: str) -> str | None:
    el = stanza.xml.find(tag)
    return None if el is None else el.attrib.get(name)


# --- profiles: nicks and avatars ----------------------------------------------------------------


def _codes(pres: Any) -> set[int]:
    ns = "{http://jabber.org/protocol/muc#user}"
    return {int(st.get("code")) for st in pres.xml.findall(f"{ns}x/{ns}status")}


def _photo(pres: Any) -> str | None:
    ns = "{vcard-temp:x:update}"
    return pres.xml.findtext(f"{ns}x/{ns}photo")


async def test_display_name_change_renames_the_occupant(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    _bridge, muc, alice, ann, room = await portal_with(xmpp_bridge, synapse, prosody, xusers)
    bob = await xusers("bob")
    await bob.join(muc, "Annie")
    await alice.wait_presence(from_nick(muc, "Annie"))
    seen = len(alice.presences)
    # Ann becomes "Annie" on Matrix: her occupant changes its nick (XEP-0045 §7.6); "Annie"
    # is taken, so she gets the conflict suffix, as at join.
    await ann.set_displayname("Annie")
    left = await alice.wait_presence(
        lambda p: (
            alice.presences.index(p) >= seen
            and str(p["from"]) == f"{muc}/Ann"
            and p["type"] == "unavailable"
        )
    )
    ns = "{http://jabber.org/protocol/muc#user}"
    assert 303 in _codes(left) and left.xml.find(f"{ns}x/{ns}item").get("nick") == "Annie [m]"
    await alice.wait_presence(from_nick(muc, "Annie [m]"))
    await ann.send_text(room, "renamed")
    msg = await alice.wait_message(lambda m: m["body"] == "renamed")
    assert str(msg["from"]) == f"{muc}/Annie [m]"
    # Once the nick is free, the next change takes it; no ghost appears on Matrix for any of
    # Ann's nicks, and the XMPP users' ghosts stay.
    await bob.close()
    await ann.set_displayname("Annie")  # unchanged: nothing happens
    await ann.set_displayname("Ann B")
    await alice.wait_presence(from_nick(muc, "Ann B"))
    joined = await members(ann, room)
    assert not {ghost_of(f"{muc}/{n}") for n in ("Ann", "Annie [m]", "Ann B")} & joined
    assert ghost_of(f"{muc}/alice") in joined


async def test_avatars_both_ways(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    _bridge, muc, alice, ann, _room = await portal_with(xmpp_bridge, synapse, prosody, xusers)
    # Matrix -> XMPP: Ann's new avatar is announced in her occupant's presence (XEP-0153) and
    # served as the vCard (XEP-0054) of her occupant and of her JID.
    mxc = await upload(ann, PNG, "image/png", "ann.png")
    profile = f"/_matrix/client/v3/profile/{quote(ann.user_id)}"
    assert (await ann.request("PUT", f"{profile}/avatar_url", {"avatar_url": mxc}))[0] == 200
    sha = hashlib.sha1(PNG).hexdigest()
    await alice.wait_presence(lambda p: str(p["from"]) == f"{muc}/Ann" and _photo(p) == sha)
    vcards = alice.xmpp.plugin["xep_0054"]
    for jid in (f"{muc}/Ann", puppet_jid(ann.user_id)):
        card = await vcards.get_vcard(JID(jid), cached=False, local=False, timeout=10)
        assert card["vcard_temp"]["PHOTO"]["BINVAL"] == PNG, jid
        assert card["vcard_temp"]["PHOTO"]["TYPE"] == "image/png"
        assert card["vcard_temp"]["FN"] == "Ann"
    # XMPP -> Matrix: alice publishes a vCard with a picture and announces its hash in her
    # presence; her ghost gets that picture as its avatar.
    picture = PNG + b"alice"
    card = vcards.make_vcard()
    card["FN"] = "Alice"
    card["PHOTO"]["TYPE"] = "image/png"
    card["PHOTO"]["BINVAL"] = picture
    await vcards.publish_vcard(card, timeout=10)
    pres = alice.xmpp.make_presence(pto=JID(f"{muc}/alice"))
    update = ET.SubElement(pres.xml, "{vcard-temp:x:update}x")
    ET.SubElement(update, "{vcard-temp:x:update}photo").text = hashlib.sha1(picture).hexdigest()
    pres.send()
    ghost = ghost_of(f"{muc}/alice")

    async def ghost_avatar() -> str | None:
        return (await ann.get_profile(ghost)).get("avatar_url")

    avatar = await until(ghost_avatar, what="alice's ghost avatar")
    assert await download(ann, avatar) == picture
    # alice removes her picture (an empty photo element): her ghost's avatar goes too.
    pres = alice.xmpp.make_presence(pto=JID(f"{muc}/alice"))
    update = ET.SubElement(pres.xml, "{vcard-temp:x:update}x")
    ET.SubElement(update, "{vcard-temp:x:update}photo")
    pres.send()

    async def ghost_has_no_avatar() -> bool:
        return not await ghost_avatar()

    await until(ghost_has_no_avatar, what="alice's ghost avatar removed")
    # Ann removes her avatar: her presence says so (an empty photo element).
    assert (await ann.request("PUT", f"{profile}/avatar_url", {"avatar_url": ""}))[0] == 200
    await alice.wait_presence(lambda p: str(p["from"]) == f"{muc}/Ann" and _photo(p) == "")
    # Bea had her avatar before she came: her occupant's first presence carries it.
    bea = await matrix_user(synapse, "Bea")
    picture = PNG + b"bea"
    bea_mxc = await upload(bea, picture, "image/png", "bea.png")
    bea_profile = f"/_matrix/client/v3/profile/{quote(bea.user_id)}"
    assert (await bea.request("PUT", f"{bea_profile}/avatar_url", {"avatar_url": bea_mxc}))[
        0
    ] == 200
    await bea.join(alias_of(muc))
    sha = hashlib.sha1(picture).hexdigest()
    await alice.wait_presence(lambda p: str(p["from"]) == f"{muc}/Bea" and _photo(p) == sha)
    card = await vcards.get_vcard(JID(f"{muc}/Bea"), cached=False, local=False, timeout=10)
    assert card["vcard_temp"]["PHOTO"]["BINVAL"] == picture


async def test_pep_avatar_of_an_xmpp_user_reaches_its_ghost(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    await xmpp_bridge()
    alice = await xusers("alice", ("xep_0084",))
    ann = await matrix_user(synapse, "Ann")
    ghost = ghost_of(alice.jid)

    async def ghost_avatar() -> str | None:
        return (await ann.get_profile(ghost)).get("avatar_url")

    # alice published her avatar over PEP (XEP-0084), readable by anyone: when Ann opens a
    # DM with her, her ghost gets it.
    picture = PNG + b"alice over pep"
    await publish_avatar(alice, picture, public=True)
    dm = await ann.create_room(invite=[ghost], is_direct=True)
    await until(lambda: _has_member(ann, dm, ghost), what="DM ghost")
    first = await until(ghost_avatar, what="alice's ghost avatar")
    assert await download(ann, first) == picture
    # alice and Ann's puppet share presence: her server notifies the puppet of her next
    # avatar (published with the default access model, contacts only).
    await subscribe_both_ways(alice, puppet_jid(ann.user_id))
    newer = PNG + b"alice over pep, later"
    await publish_avatar(alice, newer)

    async def changed() -> str | None:
        mxc = await ghost_avatar()
        return mxc if mxc and mxc != first else None

    assert await download(ann, await until(changed, what="the new avatar")) == newer
    # She disables her avatar (empty metadata): the ghost's avatar is removed.
    await alice.xmpp.plugin["xep_0084"].stop(timeout=10)

    async def removed() -> bool:
        return not await ghost_avatar()

    await until(removed, what="alice's ghost avatar removed")
    await ann.close()


async def test_pep_avatar_of_a_matrix_user_is_served_and_notified(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    await xmpp_bridge()
    alice = await xusers("alice", ("xep_0084",))
    ann = await matrix_user(synapse, "Ann")
    puppet = JID(puppet_jid(ann.user_id))
    dm = await ann.create_room(invite=[ghost_of(alice.jid)], is_direct=True)
    await until(lambda: _has_member(ann, dm, ghost_of(alice.jid)), what="DM ghost")
    await subscribe_both_ways(alice, str(puppet))
    pubsub = alice.xmpp.plugin["xep_0060"]
    avatars = alice.xmpp.plugin["xep_0084"]
    md = f"{{{NS_AVATAR_METADATA}}}"
    # Ann sets an avatar on Matrix: alice, her contact, gets a PEP notification, and reads
    # the picture from the puppet's nodes with slixmpp's XEP-0084 plugin.
    seen = len(alice.messages)
    mxc = await upload(ann, PNG, "image/png", "ann.png")
    profile = f"/_matrix/client/v3/profile/{quote(ann.user_id)}"
    assert (await ann.request("PUT", f"{profile}/avatar_url", {"avatar_url": mxc}))[0] == 200
    sha = hashlib.sha1(PNG).hexdigest()
    note = await alice.wait_message(
        lambda m: alice.messages.index(m) >= seen and m.xml.find(f".//{md}info") is not None
    )
    assert note["type"] == "headline" and JID(str(note["from"])) == puppet
    meta = await pubsub.get_items(puppet, NS_AVATAR_METADATA, timeout=10)
    info = meta.xml.find(f".//{md}info")
    assert (info.get("id"), info.get("type"), info.get("bytes")) == (
        sha,
        "image/png",
        str(len(PNG)),
    )
    got = await avatars.retrieve_avatar(puppet, sha, timeout=10)
    data = got["pubsub"]["items"]["item"]["avatar_data"]["value"]
    assert data == PNG and hashlib.sha1(data).hexdigest() == sha
    # Ann removes her avatar: empty metadata, notified and served; the data is gone.
    seen = len(alice.messages)
    assert (await ann.request("PUT", f"{profile}/avatar_url", {"avatar_url": ""}))[0] == 200
    await alice.wait_message(
        lambda m: (
            alice.messages.index(m) >= seen
            and m.xml.find(f".//{md}metadata") is not None
            and m.xml.find(f".//{md}info") is None
        )
    )
    meta = await pubsub.get_items(puppet, NS_AVATAR_METADATA, timeout=10)
    (metadata,) = meta.xml.findall(f".//{md}metadata")
    assert len(metadata) == 0
    with pytest.raises(IqError) as err:
        await avatars.retrieve_avatar(puppet, sha, timeout=10)
    assert err.value.iq["error"]["condition"] == "item-not-found"
    await ann.close()


async def _server_roster(client: XClient) -> dict[str, str]:
    """The client's roster as Prosody keeps it (a plain roster get): jid -> subscription."""
    iq = await client.xmpp.make_iq_get(queryxmlns="jabber:iq:roster").send(timeout=10)
    items = iq.xml.findall("{jabber:iq:roster}query/{jabber:iq:roster}item")
    return {str(JID(i.get("jid"))): i.get("subscription", "none") for i in items}


async def test_dm_asks_for_presence_and_the_subscription_survives_a_bridge_restart(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    bridge = await xmpp_bridge()
    alice = await xusers("alice", ("xep_0084",))
    await alice.xmpp.get_roster(timeout=10)
    ann = await matrix_user(synapse, "Ann")
    puppet = puppet_jid(ann.user_id)
    ghost = ghost_of(alice.jid)

    def from_puppet(ptype: str) -> Callable[[Any], bool]:
        return lambda p: JID(str(p["from"])).bare == puppet and p["type"] == ptype

    def after(client: XClient, n: int, ptype: str) -> Callable[[], bool]:
        return lambda: any(from_puppet(ptype)(p) for p in client.presences[n:])

    # Ann invites alice's ghost to a DM: Ann's puppet asks for alice's presence. alice's
    # client (slixmpp's default) approves and asks back, which the bridge approves.
    dm = await ann.create_room(invite=[ghost], is_direct=True)
    await until(lambda: _has_member(ann, dm, ghost), what="DM ghost")
    await alice.wait_presence(from_puppet("subscribe"))

    async def mutual() -> bool:
        return (await _server_roster(alice)).get(puppet) == "both"

    await until(mutual, what="a mutual subscription on alice's server")
    # The bridge restarts. alice sees Ann go offline and come back.
    n = len(alice.presences)
    await bridge.stop()
    await until(after(alice, n, "unavailable"), what="Ann offline")
    n = len(alice.presences)
    await xmpp_bridge()
    await until(after(alice, n, "available"), what="Ann available after the restart")
    # alice logs in again: her server probes Ann's puppet, which answers with its presence;
    # her roster still has the puppet with "both".
    name = alice.jid.split("@")[0]
    await alice.close()
    alice = XClient(prosody, name, plugins=("xep_0084",))
    await alice.connect()
    try:
        await until(after(alice, 0, "available"), what="Ann's presence for alice's new session")
        assert await _server_roster(alice) == {puppet: "both"}
        assert not any(from_puppet("unsubscribed")(p) for p in alice.presences)
        # Ann opens another DM with alice: the puppet does not ask again.
        dm2 = await ann.create_room(invite=[ghost], is_direct=True)
        await until(lambda: _has_member(ann, dm2, ghost), what="second DM ghost")
        await ann.send_text(dm2, "me again")
        await alice.wait_message(lambda m: m["body"] == "me again")
        assert not any(from_puppet("subscribe")(p) for p in alice.presences)
        # Ann's new Matrix avatar reaches alice as a PEP notification.
        md = f"{{{NS_AVATAR_METADATA}}}"
        seen = len(alice.messages)
        mxc = await upload(ann, PNG, "image/png", "ann.png")
        profile = f"/_matrix/client/v3/profile/{quote(ann.user_id)}"
        assert (await ann.request("PUT", f"{profile}/avatar_url", {"avatar_url": mxc}))[0] == 200
        note = await alice.wait_message(
            lambda m: alice.messages.index(m) >= seen and m.xml.find(f".//{md}info") is not None
        )
        assert note["type"] == "headline" and JID(str(note["from"])) == JID(puppet)
        assert note.xml.find(f".//{md}info").get("id") == hashlib.sha1(PNG).hexdigest()
        assert await _server_roster(alice) == {puppet: "both"}
    finally:
        await alice.close()
    await ann.close()


async def test_self_ping_rejoins_a_silently_dropped_occupant(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    bridge, muc, alice, ann, room = await portal_with(
        xmpp_bridge, synapse, prosody, xusers, xmpp={"self_ping_interval": 2}
    )
    connector: Any = bridge.connectors["xmpp"]
    # Ann's occupant is removed from the MUC and the bridge never hears of it: the presence
    # telling it is lost on the way (as when a server drops occupants without a word).
    reader = connector.component_xmpp.parser
    keep = reader.prefilter
    gone = f"{muc}/Ann"
    lost = asyncio.Event()

    def lose_presences(tag: str, attrib: dict[str, str]) -> int:
        if (
            tag.endswith("}presence")
            and attrib.get("from") == gone
            and attrib.get("type") == "unavailable"
        ):
            lost.set()
            return 0  # DROP
        return int(keep(tag, attrib))

    reader.prefilter = lose_presences
    try:
        seen = len(alice.presences)
        await alice.xmpp.plugin["xep_0045"].set_role(muc, "Ann", "none")
        await alice.wait_presence(
            lambda p: (
                alice.presences.index(p) >= seen
                and str(p["from"]) == gone
                and p["type"] == "unavailable"
            )
        )
        # The bridge reads its copy on its own connection, maybe after alice read hers.
        await asyncio.wait_for(lost.wait(), 30)
    finally:
        reader.prefilter = keep
    # The XEP-0410 self-ping of the idle room finds out, and the occupant comes back.
    await alice.wait_presence(
        lambda p: (
            alice.presences.index(p) > seen
            and str(p["from"]) == gone
            and p["type"] != "unavailable"
        ),
        timeout=20,
    )
    await ann.send_text(room, "still here")
    msg = await alice.wait_message(lambda m: m["body"] == "still here")
    assert str(msg["from"]) == gone
    assert ann.user_id in await members(ann, room)


async def _has_member(client: MatrixClient, room: str, user_id: str) -> bool:
    return user_id in await members(client, room)


async def _not_member(client: MatrixClient, room: str, user_id: str) -> bool:
    return user_id not in await members(client, room)


async def _typing(client: MatrixClient, room: str, user_id: str) -> bool:
    return user_id in await typing_users(client, room)


async def _not_typing(client: MatrixClient, room: str, user_id: str) -> bool:
    return user_id not in await typing_users(client, room)


async def _read_by(client: MatrixClient, room: str, event_id: str, user_id: str) -> bool:
    return user_id in await read_by(client, room, event_id)


async def _redacted(client: MatrixClient, room: str, event_id: str) -> bool:
    evt = await client.get_event(room, event_id)
    return "redacted_because" in evt.get("unsigned", {})


async def _power_of(client: MatrixClient, room: str, user_id: str, level: int) -> bool:
    levels = await client.get_state(room, "m.room.power_levels") or {}
    return bool(levels.get("users", {}).get(user_id) == level)


async def _topic_is(client: MatrixClient, room: str, topic: str) -> bool:
    state = await client.get_state(room, "m.room.topic")
    return bool(state) and state.get("topic") == topic  # type: ignore[union-attr]


async def _invites(client: MatrixClient) -> dict[str, dict[str, Any]]:
    sync = await sync_now(client)
    out: dict[str, dict[str, Any]] = {}
    for room, data in sync.get("rooms", {}).get("invite", {}).items():
        for e in data.get("invite_state", {}).get("events", []):
            if e["type"] == "m.room.member" and e["state_key"] == client.user_id:
                out[room] = e["content"]
    return out
