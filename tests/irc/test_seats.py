"""Seats kept without Matrix membership (``require_matrix_membership: false``), against a real
ngircd: a puppet stays in the channel when its user leaves the portal room, and parts when
the user logs out, when the portal is unbridged, or when a Matrix moderator kicks the user.
By default leaving parts at once and keeps nothing. (Restarts: test_e2e_membership.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.connector import (
    Login,
    MatrixMembership,
    MatrixSender,
    MatrixUser,
    Membership,
    PortalKey,
)

from .conftest import FakeBridge, RawIRC
from .helpers import NET, start_connector, unique

BOB = MatrixUser("@bob:example.org", "Bob", "user")
MOD = MatrixUser("@mod:example.org", "Mod", "user")


def change(portal: PortalKey, who: MatrixUser, membership: Membership, **kw: Any) -> Any:
    return MatrixMembership(
        portal=portal,
        sender=MatrixSender(who.user_id, who.display_name),
        event_id="$" + unique("m"),
        membership=membership,
        **kw,
    )


def line_of(nick: str, command: str, chan: str) -> Any:
    return lambda ln: ln.command == command and ln.nick == nick and ln.param(0) == chan


async def setup(bridge: FakeBridge, ngircd: Any, irc_users: Any, **over: Any) -> Any:
    chan = "#" + unique("seat")
    alice: RawIRC = await irc_users(unique("alice"))
    await alice.join(chan)
    conn = await start_connector(bridge, ngircd, **over)
    portal = PortalKey(NET, chan)
    assert await conn.resolve_portal(portal, None) is not None
    return conn, chan, portal, alice


async def join(conn: Any, portal: PortalKey, alice: RawIRC, chan: str) -> Any:
    client = await conn.client_for(BOB, portal)
    mark = len(alice.lines)
    await client.handle_matrix_membership(change(portal, BOB, Membership.JOIN))
    await alice.expect(
        lambda ln: ln in alice.lines[mark:] and line_of("Bob[m]", "JOIN", chan)(ln),
        what="Bob's JOIN",
    )
    return client


async def test_leave_keeps_the_seat_until_kick_logout_or_unbridge(
    bridge: FakeBridge, ngircd: Any, irc_users: Any
) -> None:
    conn, chan, portal, alice = await setup(
        bridge, ngircd, irc_users, require_matrix_membership=False
    )
    seats = conn.seat_store

    def parts() -> list[Any]:
        return [ln for ln in alice.lines if line_of("Bob[m]", "PART", chan)(ln)]

    try:
        # Leaving the room: the seat stays and is kept.
        client = await join(conn, portal, alice, chan)
        await client.handle_matrix_membership(change(portal, BOB, Membership.LEAVE))
        await asyncio.sleep(0.5)
        assert not parts()
        assert seats.of("test", BOB.user_id) == {chan}
        # Joining again: a plain member again.
        await client.handle_matrix_membership(change(portal, BOB, Membership.JOIN))
        assert seats.of("test", BOB.user_id) == set()
        # A Matrix moderator's kick parts.
        await client.handle_matrix_membership(change(portal, BOB, Membership.LEAVE))
        mod = await conn.client_for(MOD, portal)
        kick = change(portal, MOD, Membership.KICK, target_matrix_user=BOB.user_id)
        await mod.handle_matrix_membership(kick)
        await alice.expect(lambda ln: len(parts()) == 1, what="PART at the kick")
        assert seats.of("test", BOB.user_id) == set()
        # Logging out parts.
        client = await join(conn, portal, alice, chan)
        await client.handle_matrix_membership(change(portal, BOB, Membership.LEAVE))
        await conn.logout(Login(NET, "l1", BOB.user_id, {"network": "test"}))
        await alice.expect(lambda ln: len(parts()) == 2, what="PART at the logout")
        assert parts()[-1].param(1) == "logged out"
        assert seats.of("test", BOB.user_id) == set()
        # Unbridging parts.
        client = await join(conn, portal, alice, chan)
        await client.handle_matrix_membership(change(portal, BOB, Membership.LEAVE))
        assert seats.of("test", BOB.user_id) == {chan}
        await conn.portal_closed(portal)
        await alice.expect(lambda ln: len(parts()) == 3, what="PART at the unbridging")
        assert parts()[-1].param(1) == "unbridged"
        assert seats.users("test") == {}
    finally:
        await conn.stop()


async def test_leave_parts_by_default(bridge: FakeBridge, ngircd: Any, irc_users: Any) -> None:
    conn, chan, portal, alice = await setup(bridge, ngircd, irc_users)
    try:
        client = await join(conn, portal, alice, chan)
        await client.handle_matrix_membership(change(portal, BOB, Membership.LEAVE))
        await alice.expect(line_of("Bob[m]", "PART", chan), what="Bob's PART")
        assert conn.seat_store.users("test") == {}
    finally:
        await conn.stop()
