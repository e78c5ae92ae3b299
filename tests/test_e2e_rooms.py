"""End to end through Synapse: plumbing (link/unlink), membership and room changes from Matrix,
ephemeral events (typing, receipts, presence) and third-party lookups."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.conftest import HS_TOKEN, BridgeFactory
from tests.harness.synapse import SynapseServer
from tests.helpers import command, management_room, new_user, sent, until


async def test_link_and_unlink_existing_room(
    make_bridge: BridgeFactory, synapse: SynapseServer
) -> None:
    bridge = await make_bridge()
    ivy = new_user(synapse)
    room = await ivy.create_room(
        name="Ivy's room",
        invite=["@mimibot:localhost"],
        power_level_content_override={"users": {"@mimibot:localhost": 100}},
    )
    await until(lambda: _bot_joined(bridge, room))
    # A member without power may not link.
    joe = new_user(synapse)
    await ivy.invite(room, joe.user_id)
    await joe.join(room)
    await joe.send_text(room, "!mimi link testnet #plumbed")
    await joe.wait_for_event(room, lambda e: "Only room admins may link" in _body(e))
    # The room admin links it; messages cross; bridge info is set.
    await ivy.send_text(room, "!mimi link testnet #plumbed")
    await ivy.wait_for_event(room, lambda e: "Linked" in _body(e))
    info = await ivy.get_state(room, "m.bridge", "mimi-bridge/testnet/#plumbed")
    assert info and info["channel"]["id"] == "#plumbed"
    await ivy.send_text(room, "through the plumbing")
    assert (
        await until(
            sent(
                bridge,
                "message",
                text="<user" + ivy.user_id[5:].split(":")[0] + "> through the plumbing",
            )
        )
    )["room"] == "#plumbed"
    # Linking it twice is refused; unlinking clears the bridge info.
    await ivy.send_text(room, "!mimi link testnet #other")
    await ivy.wait_for_event(room, lambda e: "already bridged" in _body(e))
    await ivy.send_text(room, "!mimi unlink")
    await ivy.wait_for_event(room, lambda e: "Unlinked" in _body(e))
    assert await ivy.get_state(room, "m.bridge", "mimi-bridge/testnet/#plumbed") == {}
    count = len(bridge.connectors["testnet"].sent)  # type: ignore[attr-defined]
    await ivy.send_text(room, "not bridged any more")
    await ivy.wait_for_event(room, lambda e: _body(e) == "not bridged any more")
    await bridge.queues.drain()
    assert len(bridge.connectors["testnet"].sent) == count  # type: ignore[attr-defined]
    await ivy.close()
    await joe.close()


async def test_membership_and_room_changes_reach_network(
    make_bridge: BridgeFactory, synapse: SynapseServer
) -> None:
    bridge = await make_bridge()
    kim = new_user(synapse)
    mgmt = await management_room(kim)
    await command(kim, mgmt, "login testnet kim-remote", "Logged in")
    await command(kim, mgmt, "join testnet #ops", "Invited you")
    room = await kim.join("#testnet_=23ops:localhost")
    await until(sent(bridge, "membership", room="#ops", membership="join", as_="kim-remote"))
    tn: Any = bridge.connectors["testnet"]
    await tn.remote_message("#ops", "mallory", "spam")
    await kim.wait_for_event(room, lambda e: _body(e) == "spam")
    # The bot made the room; give kim the power to moderate it.
    levels = await bridge.hs.get_state(room, "m.room.power_levels") or {}
    levels.setdefault("users", {})[kim.user_id] = 100
    await bridge.hs.send_state(room, "m.room.power_levels", levels)
    await kim.kick(room, "@testnet_mallory:localhost", "no spam")
    await until(sent(bridge, "membership", membership="kick", target="mallory"))
    await kim.ban(room, "@testnet_mallory:localhost", "really")
    await until(sent(bridge, "membership", membership="ban", target="mallory"))
    await kim.send_state(room, "m.room.topic", "", {"topic": "new topic"})
    await until(sent(bridge, "meta", topic="new topic"))
    await kim.send_state(room, "m.room.name", "", {"name": "Ops room"})
    await until(sent(bridge, "meta", name="Ops room"))
    icon = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
    mxc = await _upload(kim, icon, "image/png", "icon.png")
    await kim.send_state(room, "m.room.avatar", "", {"url": mxc, "info": {"mimetype": "image/png"}})
    await until(sent(bridge, "meta", avatar=len(icon)))
    # Kim's own profile follows her puppet: display name, avatar, then no avatar.
    profile = f"/_matrix/client/v3/profile/{kim.user_id}"
    assert (await kim.request("PUT", f"{profile}/displayname", {"displayname": "Kimberly"}))[
        0
    ] == 200
    await until(sent(bridge, "profile", room="#ops", name="Kimberly", as_="kim-remote"))
    assert (await kim.request("PUT", f"{profile}/avatar_url", {"avatar_url": mxc}))[0] == 200
    await until(sent(bridge, "profile", name=None, avatar=len(icon), avatar_type="image/png"))
    assert (await kim.request("PUT", f"{profile}/avatar_url", {"avatar_url": ""}))[0] == 200
    await until(sent(bridge, "profile", name=None, avatar=None, removed=True))
    await kim.leave(room)
    await until(sent(bridge, "membership", room="#ops", membership="leave"))
    await kim.close()


async def test_new_portal_is_filled_with_history(
    make_bridge: BridgeFactory, synapse: SynapseServer
) -> None:
    bridge = await make_bridge(backfill_limit=2)
    pia = new_user(synapse)
    room = await pia.join("#testnet_=23history:localhost")
    await pia.wait_for_event(room, lambda e: _body(e) == "old message 3")
    bodies = [_body(e) for e in await pia.messages(room) if e["type"] == "m.room.message"]
    assert bodies == ["old message 2", "old message 3"]
    # A remote message that opens a portal comes after the history before it.
    tn: Any = bridge.connectors["testnet"]
    await tn.remote_message("#historylive", "olga", "the newest")
    live = await pia.join("#testnet_=23historylive:localhost")
    await pia.wait_for_event(live, lambda e: _body(e) == "the newest")
    bodies = [_body(e) for e in await pia.messages(live) if e["type"] == "m.room.message"]
    assert bodies == ["old message 2", "old message 3", "the newest"]
    # A DM opened by inviting a ghost is filled too.
    mgmt = await management_room(pia)
    await command(pia, mgmt, "login testnet pia-remote", "Logged in")
    dm = await pia.create_room(invite=["@testnet_olga:localhost"], is_direct=True)
    await pia.wait_for_event(dm, lambda e: _body(e) == "old message 3")
    bodies = [_body(e) for e in await pia.messages(dm) if e["type"] == "m.room.message"]
    assert bodies[-2:] == ["old message 2", "old message 3"]
    await pia.close()


async def test_typing_receipts_presence(make_bridge: BridgeFactory, synapse: SynapseServer) -> None:
    bridge = await make_bridge()
    lea = new_user(synapse)
    mgmt = await management_room(lea)
    await command(lea, mgmt, "login testnet lea-remote", "Logged in")
    room = await lea.join("#testnet_=23live:localhost")
    tn: Any = bridge.connectors["testnet"]
    msg = await tn.remote_message("#live", "max", "read me")
    evt = await lea.wait_for_event(room, lambda e: _body(e) == "read me")
    await lea.typing(room, True)
    await until(sent(bridge, "typing", typing=True, as_="lea-remote"))
    await lea.typing(room, False)
    await until(sent(bridge, "typing", typing=False, as_="lea-remote"))
    await lea.read_receipt(room, evt["event_id"])
    await until(sent(bridge, "receipt", target=msg, as_="lea-remote"))
    await lea.set_presence("unavailable", "lunch")
    await until(sent(bridge, "presence", presence="unavailable", as_="lea-remote"))
    # And the other way: a remote user's presence and typing show on their ghost.
    await tn.remote_presence("max", "unavailable")

    async def ghost_away() -> bool:
        status, body = await lea.request(
            "GET", "/_matrix/client/v3/presence/@testnet_max:localhost/status"
        )
        return status == 200 and body.get("presence") == "unavailable"

    await until(ghost_away, what="ghost presence")
    _, first = await lea.request("GET", "/_matrix/client/v3/sync", params={"timeout": "0"})
    since = first["next_batch"]
    await tn.remote_typing("#live", "max")

    async def ghost_typing() -> bool:
        nonlocal since
        _, body = await lea.request(
            "GET", "/_matrix/client/v3/sync", params={"timeout": "1000", "since": since}
        )
        since = body["next_batch"]
        joined = body.get("rooms", {}).get("join", {})
        ephemeral = joined.get(room, {}).get("ephemeral", {}).get("events", [])
        return any(
            e["type"] == "m.typing" and "@testnet_max:localhost" in e["content"]["user_ids"]
            for e in ephemeral
        )

    await until(ghost_typing, what="ghost typing")
    await lea.close()


async def test_thirdparty_lookups_through_the_homeserver(
    make_bridge: BridgeFactory, synapse: SynapseServer, as_port: int
) -> None:
    await make_bridge()
    nia = new_user(synapse)
    status, protocols = await nia.request("GET", "/_matrix/client/v3/thirdparty/protocols")
    assert status == 200 and "testnet" in protocols, protocols
    proto = protocols["testnet"]
    for field in proto["user_fields"] + proto["location_fields"]:
        assert field in proto["field_types"]
    assert proto["instances"][0]["network_id"] == "testnet"
    status, locations = await nia.request(
        "GET",
        "/_matrix/client/v3/thirdparty/location/testnet",
        params={"network": "testnet", "room": "#lookup"},
    )
    assert status == 200 and locations[0]["alias"] == "#testnet_=23lookup:localhost"
    status, users = await nia.request(
        "GET",
        "/_matrix/client/v3/thirdparty/user/testnet",
        params={"network": "testnet", "user": "bob"},
    )
    assert status == 200 and users[0]["userid"] == "@testnet_bob:localhost"
    # Synapse does not forward reverse lookups to appservices: ask the bridge directly.
    base = f"http://127.0.0.1:{as_port}/_matrix/app/v1/thirdparty"
    auth = {"Authorization": f"Bearer {HS_TOKEN}"}
    async with aiohttp.ClientSession(headers=auth) as s:
        async with s.get(f"{base}/user", params={"userid": "@testnet_bob:localhost"}) as r:
            assert (await r.json())[0]["fields"] == {"network": "testnet", "user": "bob"}
        async with s.get(f"{base}/location", params={"alias": "#testnet_=23x:localhost"}) as r:
            assert (await r.json())[0]["fields"] == {"network": "testnet", "room": "#x"}
        async with s.get(f"{base}/user", params={"userid": "@nobody:localhost"}) as r:
            assert r.status == 404
    await nia.close()


def _body(evt: dict[str, Any]) -> str:
    return str(evt.get("content", {}).get("body", ""))


def _bot_joined(bridge: Any, room: str) -> bool:
    return bool(bridge.hs.is_joined(room, "@mimibot:localhost"))


async def test_remote_membership_and_room_info(
    make_bridge: BridgeFactory, synapse: SynapseServer
) -> None:
    from bridge.connector import (
        Attachment,
        ChatMember,
        Membership,
        PortalKey,
        RemoteChatInfo,
        RemoteMembership,
        RemoteProfile,
        Sender,
    )

    bridge = await make_bridge()
    quinn = new_user(synapse)
    room = await quinn.join("#testnet_=23club:localhost")
    key = PortalKey("testnet", "#club")
    op, guest = Sender("oscar", "Oscar"), Sender("gus", "Gus")
    stan = Sender("stan", "Stan")
    await bridge.emit(
        RemoteChatInfo(
            portal=key,
            sender=op,
            name="The Club",
            topic="members only",
            members=[ChatMember(op, power_level=50), ChatMember(guest)],
        )
    )
    await until(lambda: _state(quinn, room, "m.room.topic", "topic", "members only"))
    await until(lambda: _state(quinn, room, "m.room.name", "name", "The Club"))
    levels = await until(lambda: _op_level(quinn, room, "@testnet_oscar:localhost"))
    assert levels == 50
    assert "@testnet_gus:localhost" in await quinn.joined_members(room)
    # gus is kicked on the network: his ghost is kicked in Matrix.
    await bridge.emit(
        RemoteMembership(
            portal=key, sender=op, membership=Membership.KICK, target=guest, reason="rude"
        )
    )
    kick = await quinn.wait_for_event(
        room,
        lambda e: (
            e["type"] == "m.room.member"
            and e["state_key"] == "@testnet_gus:localhost"
            and e["content"]["membership"] == "leave"
        ),
    )
    assert "rude" in kick["content"]["reason"]
    # oscar renames himself (the remote id changes): the new ghost replaces the old one.
    await bridge.emit(RemoteProfile(portal=key, sender=op, display_name="Oz", new_remote_id="oz"))
    await until(
        lambda: _members_are(quinn, room, "@testnet_oz:localhost", "@testnet_oscar:localhost")
    )
    # A full member snapshot: stan joins; then one without him (he left while the bridge
    # was away) makes his ghost leave, and quinn's puppet, now an operator, gives quinn power.
    oz_op = ChatMember(Sender("oz", "Oz"), power_level=50)
    await bridge.emit(RemoteChatInfo(portal=key, sender=op, members=[oz_op, ChatMember(stan)]))
    await until(lambda: _members_are(quinn, room, "@testnet_stan:localhost", "@testnet_gus:x"))
    puppet = Sender("quinn-remote", is_from_me=True, matrix_user=quinn.user_id)
    await bridge.emit(
        RemoteChatInfo(portal=key, sender=op, members=[oz_op, ChatMember(puppet, 50)])
    )
    await until(
        lambda: _members_are(quinn, room, "@testnet_oz:localhost", "@testnet_stan:localhost")
    )
    assert await until(lambda: _op_level(quinn, room, quinn.user_id)) == 50
    # Deopped: the power the bridge gave goes again.
    await bridge.emit(RemoteChatInfo(portal=key, sender=op, members=[oz_op, ChatMember(puppet, 0)]))
    await until(lambda: _no_level(quinn, room, quinn.user_id))
    # oz sets a picture, then clears it: his ghost's avatar follows.
    oz = Sender("oz", "Oz")
    picture = Attachment("oz.png", "image/png", data=b"\x89PNG\r\n\x1a\n" + b"\x01" * 64)
    await bridge.emit(RemoteProfile(portal=key, sender=oz, avatar=picture))

    async def oz_avatar() -> str:
        return str((await quinn.get_profile("@testnet_oz:localhost")).get("avatar_url") or "")

    assert (await until(oz_avatar)).startswith("mxc://")
    await bridge.emit(RemoteProfile(portal=key, sender=oz, avatar_removed=True))
    await until(lambda: _no_avatar(quinn, "@testnet_oz:localhost"))
    # quinn's own remote identity is kicked: quinn is kicked from the room.
    me = Sender("quinn-remote", is_from_me=True, matrix_user=quinn.user_id)
    await bridge.emit(
        RemoteMembership(portal=key, sender=op, membership=Membership.KICK, target=me)
    )
    await until(lambda: _not_member(bridge, room, quinn.user_id))
    await quinn.close()


async def _state(client: Any, room: str, etype: str, field: str, value: str) -> bool:
    content = await client.get_state(room, etype, "")
    return bool(content) and content.get(field) == value


async def _no_avatar(client: Any, user: str) -> bool:
    return not (await client.get_profile(user)).get("avatar_url")


async def _no_level(client: Any, room: str, user: str) -> bool:
    return await _op_level(client, room, user) is None


async def _op_level(client: Any, room: str, user: str) -> int | None:
    content = await client.get_state(room, "m.room.power_levels", "")
    return (content or {}).get("users", {}).get(user)


async def _members_are(client: Any, room: str, present: str, absent: str) -> bool:
    members = await client.joined_members(room)
    return present in members and absent not in members


async def _not_member(bridge: Any, room: str, user: str) -> bool:
    return user not in await bridge.hs.joined_members(room)


async def test_media_and_threads_both_ways(
    make_bridge: BridgeFactory, synapse: SynapseServer
) -> None:
    from bridge.connector import Attachment

    bridge = await make_bridge()
    rae = new_user(synapse)
    mgmt = await management_room(rae)
    await command(rae, mgmt, "login testnet rae-remote", "Logged in")
    room = await rae.join("#testnet_=23media:localhost")
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    # Matrix -> network: the file is downloaded with authenticated media and handed over.
    mxc = await _upload(rae, png, "image/png", "pic.png")
    await rae.send_event(
        room,
        "m.room.message",
        {
            "msgtype": "m.image",
            "body": "pic.png",
            "url": mxc,
            "info": {"mimetype": "image/png", "size": len(png)},
        },
    )
    got = await until(sent(bridge, "message", room="#media"))
    assert [tuple(f) for f in got["files"]] == [("pic.png", len(png))]
    # Network -> Matrix: an attachment becomes an m.image uploaded as the ghost.
    tn: Any = bridge.connectors["testnet"]
    await tn.remote_message(
        "#media",
        "sam",
        "",
        attachments=[Attachment(filename="photo.png", mimetype="image/png", data=png)],
    )
    img = await rae.wait_for_event(
        room,
        lambda e: (
            e["content"].get("msgtype") == "m.image" and e["sender"] == "@testnet_sam:localhost"
        ),
    )
    assert img["content"]["info"] == {"mimetype": "image/png", "size": len(png)}
    assert await _download(rae, img["content"]["url"]) == png
    # Threads: a remote reply in a thread, and a Matrix message in that thread.
    root = await tn.remote_message("#media", "sam", "thread root")
    root_evt = await rae.wait_for_event(room, lambda e: _body(e) == "thread root")
    await tn.remote_message("#media", "sam", "in the thread", thread_root=root)
    child = await rae.wait_for_event(room, lambda e: _body(e) == "in the thread")
    assert child["content"]["m.relates_to"]["rel_type"] == "m.thread"
    assert child["content"]["m.relates_to"]["event_id"] == root_evt["event_id"]
    await rae.send_event(
        room,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "matrix in thread",
            "m.relates_to": {"rel_type": "m.thread", "event_id": root_evt["event_id"]},
        },
    )
    threaded = await until(sent(bridge, "message", text="matrix in thread"))
    assert threaded["thread"] == root
    await rae.close()


async def _download(client: Any, mxc: str) -> bytes:
    import aiohttp

    server, media_id = mxc[6:].split("/", 1)
    url = f"{client.url}/_matrix/client/v1/media/download/{server}/{media_id}"
    async with (
        aiohttp.ClientSession() as s,
        s.get(url, headers={"Authorization": f"Bearer {client.token}"}) as r,
    ):
        return await r.read()


async def _upload(client: Any, data: bytes, mimetype: str, filename: str) -> str:
    import aiohttp

    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{client.url}/_matrix/media/v3/upload",
            params={"filename": filename},
            data=data,
            headers={"Authorization": f"Bearer {client.token}", "Content-Type": mimetype},
        ) as r,
    ):
        return str((await r.json())["content_uri"])
