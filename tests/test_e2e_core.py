"""End to end through a real Synapse with the test plugin connector: a Matrix user DMs the
bot, logs in, joins a portal, and text, formatting, edits, replies, reactions and redactions
cross both ways; the mapping survives a restart."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bridge.connector import ConnectorError, PortalKey
from tests.conftest import BridgeFactory
from tests.harness.synapse import SynapseServer
from tests.helpers import command, is_member, management_room, new_user, sent, until


async def test_both_directions_and_restart(
    make_bridge: BridgeFactory, synapse: SynapseServer, tmp_path: Any
) -> None:
    bridge = await make_bridge()
    alice = new_user(synapse)
    mgmt = await management_room(alice)
    await command(alice, mgmt, "login testnet alice-remote", "Logged in")
    reply = await command(alice, mgmt, "join testnet #general", "Invited you")
    assert "#testnet_=23general:localhost" in reply
    room = await alice.join("#testnet_=23general:localhost")
    state = await alice.get_state(room, "m.bridge", "mimi-bridge/testnet/#general")
    assert state and state["protocol"]["id"] == "testnet"
    assert await alice.get_state(room, "uk.half-shot.bridge", "mimi-bridge/testnet/#general")

    # Matrix -> remote: text and formatted text, sent as the user's own remote identity.
    await alice.send_text(room, "hello remote")
    plain = await until(sent(bridge, "message", text="hello remote"))
    assert plain["as_"] == "alice-remote" and plain["relayed"] is False
    await alice.send_event(
        room,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "**bold**",
            "format": "org.matrix.custom.html",
            "formatted_body": "<strong>bold</strong><script>x()</script>",
        },
    )
    fmt = await until(sent(bridge, "message", text="**bold**"))
    assert "<strong>bold</strong>" in fmt["html"] and "script" not in fmt["html"]

    # Remote -> Matrix: a ghost posts, with HTML that must be sanitized.
    tn: Any = bridge.connectors["testnet"]
    bob_msg = await tn.remote_message(
        "#general", "bob", "hi from bob", html="<em>hi</em> <img src=x onerror=alert(1)>"
    )
    evt = await alice.wait_for_event(room, lambda e: e["content"].get("body") == "hi from bob")
    assert evt["sender"] == "@testnet_bob:localhost"
    assert "onerror" not in evt["content"]["formatted_body"]
    assert "<em>hi</em>" in evt["content"]["formatted_body"]
    # No pill: no m.mentions, so display-name keyword notifications still apply; a remote
    # "@room" is marked as mentioning nobody.
    assert "m.mentions" not in evt["content"]
    await tn.remote_message("#general", "bob", "@room wake up")
    wake = await alice.wait_for_event(room, lambda e: e["content"].get("body") == "@room wake up")
    assert wake["content"]["m.mentions"] == {}

    # A Matrix reply to bob reaches the network as a reply to bob's remote id.
    await alice.reply(room, evt["event_id"], "replying to bob")
    rep = await until(sent(bridge, "message", text="replying to bob"))
    assert rep["reply_to"] == bob_msg

    # A remote reply to alice's message becomes a Matrix reply to her event.
    alice_evt = await alice.wait_for_event(
        room, lambda e: e["content"].get("body") == "hello remote"
    )
    await tn.remote_message("#general", "bob", "bob answers", reply_to=plain["id"])
    answer = await alice.wait_for_event(room, lambda e: e["content"].get("body") == "bob answers")
    assert answer["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == alice_evt["event_id"]

    # Edits both ways.
    await alice.edit(room, alice_evt["event_id"], "hello remote (edited)")
    edit = await until(sent(bridge, "edit", target=plain["id"]))
    assert edit["text"] == "hello remote (edited)"
    await tn.remote_edit("#general", "bob", bob_msg, "hi from bob, corrected")
    bob_edit = await alice.wait_for_event(
        room,
        lambda e: e["content"].get("m.new_content", {}).get("body") == "hi from bob, corrected",
    )
    assert bob_edit["content"]["m.relates_to"] == {
        "rel_type": "m.replace",
        "event_id": evt["event_id"],
    }

    # Reactions both ways.
    reaction_id = await alice.react(room, evt["event_id"], "👍")
    react = await until(sent(bridge, "reaction", target=bob_msg, key="👍"))
    await tn.remote_reaction("#general", "bob", plain["id"], "🎉")
    bob_react = await alice.wait_for_event(
        room, lambda e: e["type"] == "m.reaction" and e["content"]["m.relates_to"]["key"] == "🎉"
    )
    assert bob_react["content"]["m.relates_to"]["event_id"] == alice_evt["event_id"]

    # Redactions both ways: of a reaction, then of messages.
    await alice.redact(room, reaction_id)
    await until(sent(bridge, "unreact", target=bob_msg, key="👍"))
    assert react["id"]
    await alice.redact(room, alice_evt["event_id"])
    await until(sent(bridge, "redaction", target=plain["id"]))
    await tn.remote_redaction("#general", "bob", bob_msg)

    async def redacted() -> bool:
        ev = await alice.get_event(room, evt["event_id"])
        return not ev.get("content")

    await until(redacted)

    # A remote moderator deletes someone else's message: as its ghost where the ghost may
    # redact in the room; dave's ghost has no power here, so the bot does it for him.
    victim = await tn.remote_message("#general", "bob", "to be moderated")
    victim_evt = await alice.wait_for_event(
        room, lambda e: e["content"].get("body") == "to be moderated"
    )
    await tn.remote_message("#general", "dave", "dave is here")
    await alice.wait_for_event(room, lambda e: e["content"].get("body") == "dave is here")
    await tn.remote_redaction("#general", "dave", victim)

    async def moderated() -> bool:
        ev = await alice.get_event(room, victim_evt["event_id"])
        return "redacted_because" in ev.get("unsigned", {})

    await until(moderated)
    because = (await alice.get_event(room, victim_evt["event_id"]))["unsigned"]["redacted_because"]
    assert because["sender"] == "@mimibot:localhost"

    # Power levels: the bot's own changes are not bridged; a Matrix user's change of a
    # ghost's level reaches the network as that user.
    levels = await bridge.hs.get_state(room, "m.room.power_levels") or {}
    levels.setdefault("users", {})[alice.user_id] = 100
    await bridge.hs.send_state(room, "m.room.power_levels", levels)
    levels = await until(lambda: _level_is(alice, room, alice.user_id, 100))
    levels["users"]["@testnet_dave:localhost"] = 50
    await alice.send_state(room, "m.room.power_levels", "", levels)
    power = await until(sent(bridge, "power", target="dave"))
    assert power["as_"] == "alice-remote" and (power["previous"], power["level"]) == (0, 50)
    assert not sent(bridge, "power", target=alice.user_id)()

    # The mapping survives a restart: a remote edit after it still finds its Matrix event.
    later = await tn.remote_message("#general", "carol", "before restart")
    before = await alice.wait_for_event(
        room, lambda e: e["content"].get("body") == "before restart"
    )
    await bridge.stop()
    bridge2 = await make_bridge()
    tn2: Any = bridge2.connectors["testnet"]
    await tn2.remote_edit("#general", "carol", later, "after restart")
    after = await alice.wait_for_event(
        room, lambda e: e["content"].get("m.new_content", {}).get("body") == "after restart"
    )
    assert after["content"]["m.relates_to"]["event_id"] == before["event_id"]
    # And a Matrix reply to a pre-restart message still carries the remote id.
    await alice.reply(room, before["event_id"], "still mapped")
    again = await until(sent(bridge2, "message", text="still mapped"))
    assert again["reply_to"] == later
    await alice.close()


async def test_relay_and_failures_are_told(
    make_bridge: BridgeFactory, synapse: SynapseServer
) -> None:
    bridge = await make_bridge()
    dave = new_user(synapse)
    await dave.set_displayname("Dave")
    room = await dave.join("#testnet_=23relay:localhost")
    # No login: relayed by the network's bot with the configured prefix.
    await dave.send_text(room, "relayed text")
    relayed = await until(sent(bridge, "message", text="<Dave> relayed text"))
    assert relayed["as_"] == "relaybot" and relayed["relayed"] is True
    # Formatted: the prefix's own "<" and ">" are text in the HTML, not a tag.
    await dave.send_text(
        room, "**loud**", format="org.matrix.custom.html", formatted_body="<b>loud</b>"
    )
    loud = await until(sent(bridge, "message", text="<Dave> **loud**"))
    assert loud["html"] == "&lt;Dave&gt; <b>loud</b>"
    # The network refuses a message: the user is told in the room, not left guessing.
    await dave.send_text(room, "fail: please")
    notice = await dave.wait_for_event(
        room,
        lambda e: (
            e["content"].get("msgtype") == "m.notice"
            and "not delivered" in e["content"].get("body", "")
        ),
    )
    assert "refused" in notice["content"]["body"]
    # Encrypted events cannot be bridged: said so.
    await dave.send_event(
        room, "m.room.encrypted", {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x"}
    )
    await dave.wait_for_event(
        room, lambda e: "Encrypted messages cannot be bridged" in e["content"].get("body", "")
    )
    # An unknown command gets a short hint.
    mgmt = await management_room(dave)
    await command(dave, mgmt, "frobnicate", "unknown command")
    await dave.close()


async def test_alias_for_missing_room_is_404(
    make_bridge: BridgeFactory, synapse: SynapseServer
) -> None:
    await make_bridge()
    erin = new_user(synapse)
    with pytest.raises(Exception) as info:
        await erin.join("#testnet_=23missing:localhost")
    assert "404" in str(info.value) or "M_NOT_FOUND" in str(info.value)
    await erin.close()


async def test_ghost_dm_and_remote_dm(make_bridge: BridgeFactory, synapse: SynapseServer) -> None:
    bridge = await make_bridge()
    frank = new_user(synapse)
    mgmt = await management_room(frank)
    await command(frank, mgmt, "login testnet frank-remote", "Logged in")
    room = await frank.create_room(invite=["@testnet_zoe:localhost"], is_direct=True)
    await until(lambda: is_member(frank, room, "@testnet_zoe:localhost"))
    await frank.wait_for_event(
        room, lambda e: "decrypted at the bridge" in e["content"].get("body", "")
    )
    await frank.send_text(room, "hi zoe")
    dm = await until(sent(bridge, "message", text="hi zoe"))
    assert dm["room"] == "zoe"
    # The bot is not in this DM: a failure is told by zoe's ghost.
    await frank.send_text(room, "fail: this one")
    notice = await frank.wait_for_event(
        room, lambda e: "refused this message" in e["content"].get("body", "")
    )
    assert notice["sender"] == "@testnet_zoe:localhost"
    assert notice["content"]["msgtype"] == "m.notice"
    # zoe writes back: lands in the same DM.
    tn: Any = bridge.connectors["testnet"]
    await tn.remote_message("zoe", "zoe", "hi frank", receiver=frank.user_id)
    await frank.wait_for_event(room, lambda e: e["content"].get("body") == "hi frank")
    # A remote user with no DM yet: a new room is created, frank invited, and he reads it.
    await tn.remote_message("yves", "yves", "new chat", receiver=frank.user_id)
    from bridge.connector import PortalKey

    portal = await until(
        lambda: bridge.portal_store.get(PortalKey("testnet", "yves", frank.user_id))
    )
    await frank.join(portal.room_id)
    evt = await frank.wait_for_event(
        portal.room_id, lambda e: e["content"].get("body") == "new chat"
    )
    assert evt["sender"] == "@testnet_yves:localhost"
    await frank.close()


async def test_reply_to_a_message_whose_mapping_is_still_being_written(
    make_bridge: BridgeFactory, synapse: SynapseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The id mapping of a remote message is written behind: a Matrix reply, edit target or
    redaction that comes before it is stored still finds it."""
    from bridge.db import MessageStore

    bridge = await make_bridge()
    run = MessageStore._run
    release = asyncio.Event()

    async def held_run(store: MessageStore, statements: Any) -> None:
        await release.wait()
        await run(store, statements)

    async def stored(event_id: str) -> bool:
        q = "SELECT 1 FROM message WHERE event_id=$1"
        return bool(await bridge.db.fetchval(q, event_id))

    monkeypatch.setattr(MessageStore, "_run", held_run)
    gil = new_user(synapse)
    mgmt = await management_room(gil)
    await command(gil, mgmt, "login testnet gil-remote", "Logged in")
    room = await gil.join("#testnet_=23slowdb:localhost")
    tn: Any = bridge.connectors["testnet"]
    remote_id = await tn.remote_message("#slowdb", "hal", "not stored yet")
    evt = await gil.wait_for_event(room, lambda e: e["content"].get("body") == "not stored yet")
    assert not await stored(evt["event_id"])  # still held
    await gil.reply(room, evt["event_id"], "quick reply")
    rep = await until(sent(bridge, "message", text="quick reply"))
    assert rep["reply_to"] == remote_id
    assert not await stored(evt["event_id"])
    release.set()
    await until(lambda: stored(evt["event_id"]))
    await gil.close()


async def _level_is(client: Any, room: str, user_id: str, level: int) -> dict[str, Any] | None:
    levels = await client.get_state(room, "m.room.power_levels") or {}
    return levels if levels.get("users", {}).get(user_id) == level else None


async def test_failure_before_delivery_is_told_to_the_sender(
    make_bridge: BridgeFactory, synapse: SynapseServer
) -> None:
    """A message that fails for good before any client speaks (the network refuses to give
    one, or the connector has a bug) is told to its sender in the portal, with the reason."""
    bridge = await make_bridge()
    tn: Any = bridge.connectors["testnet"]
    gus = new_user(synapse)
    await gus.set_displayname("Gus")

    def notice_for(text: str) -> Any:
        return lambda e: (
            e["content"].get("msgtype") == "m.notice" and text in e["content"].get("body", "")
        )

    async def unreachable(portal: PortalKey) -> None:
        raise ConnectorError(f"the test network cannot reach {portal.remote_id}")

    async def buggy(portal: PortalKey) -> None:
        raise RuntimeError("a bug in the test network")

    room = await gus.join("#testnet_=23unreachable:localhost")
    tn.relay_client = unreachable
    await gus.send_text(room, "into the void")
    told = await gus.wait_for_event(room, notice_for("was not delivered"))
    assert told["sender"] == "@mimibot:localhost"
    assert told["content"]["body"] == (
        "Gus: your message was not delivered: the test network cannot reach #unreachable."
    )
    # An unexpected error: the queue's last resort still tells, without the traceback.
    tn.relay_client = buggy
    await gus.send_text(room, "into the bug")
    told = await gus.wait_for_event(room, notice_for("an internal error"))
    assert told["content"]["body"] == (
        "Gus: your message was not delivered: an internal error in the bridge."
    )
    assert not [x for x in tn.sent if x["kind"] == "message"]
    await gus.close()


async def test_remote_message_the_homeserver_refuses_is_told_in_the_portal(
    make_bridge: BridgeFactory, synapse: SynapseServer
) -> None:
    """A remote user's message the homeserver will not take (here: the room lets only the
    bot speak) is not dropped in silence: the portal's Matrix members read that it is missing."""
    bridge = await make_bridge()
    tn: Any = bridge.connectors["testnet"]
    ida = new_user(synapse)
    room = await ida.join("#testnet_=23muted:localhost")
    await tn.remote_message("#muted", "bob", "first, while bob may speak")
    await ida.wait_for_event(
        room, lambda e: e["content"].get("body") == "first, while bob may speak"
    )
    levels = await bridge.hs.get_state(room, "m.room.power_levels") or {}
    levels["events_default"] = 100
    await bridge.hs.send_state(room, "m.room.power_levels", levels)
    await tn.remote_message("#muted", "bob", "refused by the homeserver")
    told = await ida.wait_for_event(
        room, lambda e: "could not be bridged" in e["content"].get("body", ""), 30
    )
    assert told["sender"] == "@mimibot:localhost"
    assert told["content"]["msgtype"] == "m.notice"
    assert told["content"]["body"].startswith(
        "A message from Bob on Test Network could not be bridged: the homeserver refused it ("
    )
    await ida.close()


async def test_portal_of_a_removed_connector_tells_its_users(
    make_bridge: BridgeFactory, synapse: SynapseServer
) -> None:
    """The connector of a portal is taken out of the config: a message there is answered with
    why it goes nowhere."""
    first = await make_bridge()
    ivy = new_user(synapse)
    await ivy.set_displayname("Ivy")
    room = await ivy.join("#testnet_=23retired:localhost")
    await first.stop()
    await make_bridge(connectors={})
    await ivy.send_text(room, "anyone here?")
    told = await ivy.wait_for_event(
        room, lambda e: "your message was not delivered" in e["content"].get("body", ""), 30
    )
    assert told["content"]["body"] == (
        "Ivy: your message was not delivered: no connector serves the network 'testnet' any more."
    )
    await ivy.close()
