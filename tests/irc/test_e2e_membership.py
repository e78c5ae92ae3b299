"""End to end, real Synapse and ngircd: whether Matrix users must be joined to a portal room
to be puppeted in its channel (``require_matrix_membership``). By default a puppet parts when
its user leaves the room and a restart brings back only the puppets of users still joined;
with ``false`` the puppet keeps its seat, after a restart too."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tests.conftest import BridgeFactory
from tests.harness.ircd import IrcServer
from tests.harness.synapse import MatrixClient

from .conftest import RawIRC
from .test_e2e_synapse import IrcUsers, alias, irc_connectors, joined, uniq


async def names(client: RawIRC, channel: str) -> set[str]:
    """The channel's nicks as NAMES gives them now (without the mode prefixes)."""
    mark = len(client.lines)
    client.send(f"NAMES {channel}")
    await client.expect(
        lambda ln: (
            ln in client.lines[mark:]
            and ln.command == "366"
            and ln.param(1).lower() == channel.lower()
        ),
        what=f"NAMES {channel}",
    )
    found: set[str] = set()
    for ln in client.lines[mark:]:
        if ln.command == "353" and ln.param(2).lower() == channel.lower():
            found.update(n.lstrip("~&@%+") for n in ln.param(3).split())
    return found


def parted(nick: str, channel: str) -> Callable[[Any], bool]:
    return lambda ln: (
        ln.command == "PART" and ln.nick == nick and ln.param(0).lower() == channel.lower()
    )


async def member(user: MatrixClient, chan: str, carol: RawIRC) -> tuple[str, str]:
    """The user joins the channel's portal by its alias; returns (room, puppet nick) once the
    puppet's JOIN is seen on IRC."""
    room = await user.join(alias(chan))
    puppet = f"{(await user.get_profile(user.user_id))['displayname']}[m]"
    await carol.expect(joined(puppet, chan), timeout=30, what=f"{puppet}'s JOIN")
    return room, puppet


async def restart(
    make_bridge: BridgeFactory, bridge: Any, cfg: dict[str, Any], carol: RawIRC, puppets: list[str]
) -> tuple[Any, int]:
    await bridge.stop()
    for puppet in puppets:
        await carol.expect(
            lambda ln, p=puppet: ln.command == "QUIT" and ln.nick == p, what=f"{puppet}'s QUIT"
        )
    mark = len(carol.lines)
    return await make_bridge(connectors=cfg), mark


async def test_leaving_the_room_parts_the_channel_by_default(
    make_bridge: BridgeFactory, ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    """Ann leaves the room while the bridge runs: her puppet parts. Bob leaves it while the
    bridge is down: after the restart his puppet is not brought back; Cid, still joined, is."""
    chan = "#" + uniq("member")
    carol = await irc(ngircd, "carol")
    await carol.join(chan)
    cfg = irc_connectors(ngircd)
    bridge = await make_bridge(connectors=cfg)
    ann, bob, cid = await matrix("Ann"), await matrix("Bob"), await matrix("Cid")
    ann_room, ann_puppet = await member(ann, chan, carol)
    bob_room, bob_puppet = await member(bob, chan, carol)
    _, cid_puppet = await member(cid, chan, carol)
    assert {ann_puppet, bob_puppet, cid_puppet} <= await names(carol, chan)

    await ann.leave(ann_room)
    await carol.expect(parted(ann_puppet, chan), timeout=30, what="Ann's puppet's PART")
    assert ann_puppet not in await names(carol, chan)

    await bridge.stop()
    for puppet in (bob_puppet, cid_puppet):
        await carol.expect(lambda ln, p=puppet: ln.command == "QUIT" and ln.nick == p)
    await bob.leave(bob_room)  # while the bridge is down
    mark = len(carol.lines)
    await make_bridge(connectors=cfg)
    await carol.expect(
        lambda ln: ln in carol.lines[mark:] and joined(cid_puppet, chan)(ln),
        timeout=60,
        what="Cid's puppet's rejoin",
    )
    await asyncio.sleep(2)  # time for any other rejoin to show
    now = await names(carol, chan)
    assert cid_puppet in now
    assert ann_puppet not in now and bob_puppet not in now
    assert not [ln for ln in carol.lines[mark:] if joined(ann_puppet, chan)(ln)]
    assert not [ln for ln in carol.lines[mark:] if joined(bob_puppet, chan)(ln)]


async def test_puppet_keeps_its_seat_without_membership_when_not_required(
    make_bridge: BridgeFactory, ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    """With ``require_matrix_membership: false`` Ann's puppet stays in the channel when she
    leaves the room, and comes back there after a bridge restart."""
    chan = "#" + uniq("seat")
    carol = await irc(ngircd, "carol")
    await carol.join(chan)
    cfg = irc_connectors(ngircd, require_matrix_membership=False)
    bridge = await make_bridge(connectors=cfg)
    ann, bob = await matrix("Ann"), await matrix("Bob")
    ann_room, ann_puppet = await member(ann, chan, carol)
    await ann.leave(ann_room)
    # Bob's join comes after Ann's leave in the room: once his puppet is in, the leave was
    # handled.
    _, bob_puppet = await member(bob, chan, carol)
    await asyncio.sleep(1)
    assert not [ln for ln in carol.lines if parted(ann_puppet, chan)(ln)]
    assert {ann_puppet, bob_puppet} <= await names(carol, chan)

    bridge, mark = await restart(make_bridge, bridge, cfg, carol, [ann_puppet, bob_puppet])
    for puppet in (bob_puppet, ann_puppet):
        await carol.expect(
            lambda ln, p=puppet: ln in carol.lines[mark:] and joined(p, chan)(ln),
            timeout=60,
            what=f"{puppet}'s rejoin",
        )
    assert {ann_puppet, bob_puppet} <= await names(carol, chan)
