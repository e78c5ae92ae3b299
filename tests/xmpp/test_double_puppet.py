"""Double puppeting with XMPP, end to end through Synapse and Prosody: what a logged-in Matrix
user writes from another XMPP client on their JID shows in Matrix as sent by the user
themselves, once, and is not sent back to XMPP. The bridge acts as users of its homeserver
through the second registration, or as any user with the token given by ``login matrix``."""

from __future__ import annotations

import asyncio
from typing import Any

from slixmpp import JID

from tests.conftest import DOUBLE_PUPPET_TOKEN
from tests.harness.prosody import ProsodyServer
from tests.harness.synapse import MatrixClient, SynapseServer
from tests.helpers import command, management_room, until

from .conftest import XClient, unique
from .test_e2e_synapse import (
    _redacted,
    alias_of,
    body,
    from_nick,
    matrix_user,
    new_room,
    sid,
)
from .test_e2e_synapse import xmpp_bridge as _xmpp_bridge
from .test_e2e_synapse import xusers as _xusers

# The fixtures of the XMPP end-to-end tests, shared.
xmpp_bridge = _xmpp_bridge
xusers = _xusers

SOURCE = "org.mimi.source"


async def _jo_with_phone(
    synapse: SynapseServer, prosody: ProsodyServer, muc: str, alice: Any
) -> tuple[MatrixClient, str, str, XClient]:
    """Jo, logged in to XMPP with her own JID, in the MUC's portal; her phone on the same JID
    in the MUC under her nick. Returns Jo, her management room, the portal and the phone."""
    name = unique("jo")
    prosody.register_user(name, "jo-secret")
    jo = await matrix_user(synapse, "Jo")
    mgmt = await management_room(jo)
    await command(jo, mgmt, f"login xmpp {name}@{prosody.domain} jo-secret", "Logged in as")
    room = await jo.join(alias_of(muc))
    await alice.wait_presence(from_nick(muc, "Jo"))
    phone = XClient(prosody, name, password="jo-secret", plugins=("xep_0280",))
    await phone.connect()
    await phone.xmpp.plugin["xep_0280"].enable(timeout=5)
    await phone.join(muc, "Jo")
    return jo, mgmt, room, phone


def _groupchat(phone: XClient, muc: str, text: str) -> Any:
    msg = phone.xmpp.make_message(mto=JID(muc), mbody=text, mtype="groupchat")
    msg["id"] = msg["origin_id"]["id"] = unique("phone")
    msg.send()
    return msg


async def _no_second_copy(alice: Any, phone: XClient, muc: str, text: str) -> None:
    """``text`` reached the MUC once: the bridge did not send Matrix's copy back. A last
    message from the phone, seen by alice after it, shows that nothing more is coming."""
    last = unique("last")
    _groupchat(phone, muc, last)
    await alice.wait_message(lambda m: m["body"] == last)
    await asyncio.sleep(1)
    assert [m["body"] for m in alice.messages].count(text) == 1


async def test_the_users_other_xmpp_client_speaks_as_the_user_through_the_appservice(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    await xmpp_bridge(double_puppet={"as_token": DOUBLE_PUPPET_TOKEN})
    muc = new_room(prosody)
    alice = await xusers("alice")
    await alice.join(muc, "alice")
    jo, _mgmt, room, phone = await _jo_with_phone(synapse, prosody, muc, alice)
    try:
        # A message from the phone: in Matrix as Jo herself, unmarked, once.
        sent = _groupchat(phone, muc, "hello from my *phone*")
        evt = await jo.wait_for_event(room, lambda e: body(e).endswith("hello from my *phone*"))
        assert evt["sender"] == jo.user_id
        assert body(evt) == "hello from my *phone*"
        assert evt["content"][SOURCE] == "remote"
        at_alice = await alice.wait_message(lambda m: m["body"] == "hello from my *phone*")
        await _no_second_copy(alice, phone, muc, "hello from my *phone*")
        # A correction from the phone: Jo's own edit of her message.
        fix = phone.xmpp.make_message(mto=JID(muc), mbody="hello from my phone!", mtype="groupchat")
        fix["replace"]["id"] = sent["id"]
        fix.send()
        edit = await jo.wait_for_event(
            room, lambda e: e["content"].get("m.relates_to", {}).get("rel_type") == "m.replace"
        )
        assert edit["sender"] == jo.user_id
        assert edit["content"]["m.relates_to"]["event_id"] == evt["event_id"]
        assert edit["content"]["m.new_content"]["body"] == "hello from my phone!"
        # A reaction from the phone: Jo's own m.reaction.
        alice.xmpp.send_message(mto=JID(muc), mbody="react to this", mtype="groupchat")
        hers = await jo.wait_for_event(room, lambda e: body(e) == "react to this")
        seen = await phone.wait_message(lambda m: m["body"] == "react to this")
        react = phone.xmpp.make_message(mto=JID(muc), mtype="groupchat")
        react["reactions"]["id"] = sid(seen)
        react["reactions"]["values"] = ["👍"]
        react.send()
        reaction = await jo.wait_for_event(room, lambda e: e["type"] == "m.reaction")
        assert reaction["sender"] == jo.user_id
        assert reaction["content"]["m.relates_to"]["event_id"] == hers["event_id"]
        assert reaction["content"]["m.relates_to"]["key"] == "👍"
        # What Jo writes from Matrix still reaches XMPP, once.
        await jo.send_text(room, "from matrix")
        await alice.wait_message(lambda m: m["body"] == "from matrix")
        await _no_second_copy(alice, phone, muc, "from matrix")
        texts = [body(e) for e in await jo.messages(room) if e["type"] == "m.room.message"]
        assert texts.count("hello from my *phone*") == 1
        assert texts.count("from matrix") == 1
        assert not [t for t in texts if "(from their XMPP account)" in t]
        # A retraction from the phone: Jo redacts her message herself.
        retract = phone.xmpp.make_message(mto=JID(muc), mtype="groupchat")
        retract["retract"]["id"] = sid(at_alice)
        retract.send()
        await until(lambda: _redacted(jo, room, evt["event_id"]), what="phone's retraction")
        redacted = await jo.get_event(room, evt["event_id"])
        assert redacted["unsigned"]["redacted_because"]["sender"] == jo.user_id
        # Nothing the bridge did as Jo went back to XMPP as a retraction or correction.
        await _no_second_copy(alice, phone, muc, "hello from my phone!")
        assert [m["body"] for m in alice.messages].count("hello from my *phone*") == 1
    finally:
        await phone.close()
    await jo.close()


async def test_login_matrix_lets_the_bridge_speak_as_the_user_with_their_token(
    xmpp_bridge: Any, synapse: SynapseServer, prosody: ProsodyServer, xusers: Any
) -> None:
    """Without the second registration, the user's own access token (``login matrix``)
    lets the bridge speak as them; ``logout matrix`` brings the marked messages back."""
    await xmpp_bridge()
    muc = new_room(prosody)
    alice = await xusers("alice")
    await alice.join(muc, "alice")
    jo, mgmt, room, phone = await _jo_with_phone(synapse, prosody, muc, alice)
    try:
        label = "Jo (from their XMPP account)"
        _groupchat(phone, muc, "before the token")
        marked = await jo.wait_for_event(room, lambda e: body(e).endswith("before the token"))
        assert marked["sender"] == "@mimibot:localhost"
        assert body(marked) == f"{label}: before the token"
        await command(jo, mgmt, "help", "`login matrix <access token> [homeserver address]`")
        # Someone else's token, or none that works, is refused and nothing is stored.
        other = await matrix_user(synapse, "Other")
        await command(jo, mgmt, f"login matrix {other.token}", "not yours")
        await command(jo, mgmt, "login matrix not-a-token", "did not accept")
        _groupchat(phone, muc, "still marked")
        await jo.wait_for_event(room, lambda e: body(e) == f"{label}: still marked")
        # Her own token: the phone's messages are hers.
        await command(jo, mgmt, f"login matrix {jo.token}", "Logged in to Matrix")
        _groupchat(phone, muc, "with my token")
        evt = await jo.wait_for_event(room, lambda e: body(e).endswith("with my token"))
        assert evt["sender"] == jo.user_id
        assert body(evt) == "with my token"
        await _no_second_copy(alice, phone, muc, "with my token")
        await command(jo, mgmt, "ping", "matrix/")
        # Logged out of Matrix: marked by the bot again.
        await command(jo, mgmt, "logout matrix", "Logged out of Matrix")
        _groupchat(phone, muc, "after logout")
        again = await jo.wait_for_event(room, lambda e: body(e).endswith("after logout"))
        assert again["sender"] == "@mimibot:localhost"
        assert body(again) == f"{label}: after logout"
        # A token made for the bridge, then logged out on the homeserver: the bridge forgets
        # it, tells Jo, and shows the message by the bot all the same.
        localpart = jo.user_id[1:].split(":")[0]
        token = await asyncio.to_thread(synapse.login, localpart, f"{localpart}-password")
        await command(jo, mgmt, f"login matrix {token}", "Logged in to Matrix")
        _groupchat(phone, muc, "with the bridge's token")
        evt = await jo.wait_for_event(room, lambda e: body(e).endswith("with the bridge's token"))
        assert evt["sender"] == jo.user_id
        revoked = MatrixClient(synapse.url, token, jo.user_id)
        status, _ = await revoked.request("POST", "/_matrix/client/v3/logout", {})
        assert status == 200
        await revoked.close()
        _groupchat(phone, muc, "after the token was revoked")
        late = await jo.wait_for_event(room, lambda e: body(e).endswith("token was revoked"))
        assert late["sender"] == "@mimibot:localhost"
        assert body(late) == f"{label}: after the token was revoked"
        await jo.wait_for_event(mgmt, lambda e: "no longer works" in body(e))
        await command(jo, mgmt, "logout matrix", "You have no Matrix login")
        await other.close()
    finally:
        await phone.close()
    await jo.close()
