"""Joining and leaving MUCs for Matrix users (XEP-0045): nick conflicts, instant rooms, the
listener occupant whose copy of the room is read, and self-ping (XEP-0410) to notice and
rejoin an occupant the room dropped silently."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from slixmpp.exceptions import IqError, IqTimeout

from bridge.connector import (
    ChatMember,
    ConnectorError,
    Membership,
    PortalKey,
    RemoteChatInfo,
    RemoteMembership,
    Sender,
)

from . import matrix_to_xmpp as out
from . import muc as mucmod
from . import xmpp_to_matrix as inc
from .component import NotConnected
from .identity import NETWORK, Identity
from .muc import MucRoom, Occupant
from .part import Part

if TYPE_CHECKING:
    pass


class MucJoins(Part):
    """Puts Matrix users into MUCs as occupants and keeps them there."""

    async def join_or_notify(
        self, room: MucRoom, identity: Identity, portal: PortalKey | None
    ) -> Occupant | None:
        try:
            return await self.join(room, identity)
        except ConnectorError as e:
            await self.c.notify(
                identity.user_id, str(e), portal or PortalKey(NETWORK, room.jid.bare)
            )
        except Exception:
            self.log.exception("joining %s for %s failed", room.jid, identity.user_id)
        return None

    async def join(self, room: MucRoom, identity: Identity) -> Occupant:
        user_id = identity.user_id
        occ = room.ours.get(user_id)
        display = await self.c.user_display_name(user_id)
        if occ is None or occ.identity is not identity:
            occ = Occupant(identity, room.jid, display)
            room.ours[user_id] = occ
        occ.wanted = True
        occ.display_name = display
        if occ.state == "joined":
            return occ
        if occ.join_task is None or occ.join_task.done():
            occ.join_task = asyncio.create_task(self._join_attempts(room, occ))
        await asyncio.shield(occ.join_task)
        return occ

    async def _join_attempts(self, room: MucRoom, occ: Occupant) -> None:
        ident = occ.identity
        fallback = ident.user_id[1:].split(":", 1)[0]
        base = mucmod.clean_nick(occ.display_name, fallback)
        loop = asyncio.get_running_loop()
        for attempt in range(10):
            occ.nick = mucmod.nick_candidate(base, self.cfg.nick_conflict_suffix, attempt)
            occ.state = "joining"
            if room.listener() is occ and room.remote:
                room.sync_seen = set()
            occ.waiter = loop.create_future()
            occ.photo = await self.c.profiles.photo_of(ident)
            pres = out.join_presence(
                ident.xmpp,
                pfrom=ident.jid,
                occupant=occ.occupant_jid,
                caps=None if ident.login else self.c.caps,
                photo=occ.photo,
                **self.presence_args(ident.user_id),
            )
            try:
                ident.stream.send(pres)
            except NotConnected as e:
                occ.state = "left"
                raise ConnectorError(
                    f"Could not join {room.jid}: the XMPP server is not reachable."
                ) from e
            try:
                kind, codes, err = await asyncio.wait_for(occ.waiter, self.cfg.send_timeout * 2)
            except TimeoutError as e:
                occ.state = "left"
                raise ConnectorError(f"Could not join {room.jid}: the room did not answer.") from e
            if kind == "joined":
                occ.state = "joined"
                occ.last_error = None
                room.touch()
                if mucmod.ROOM_CREATED in codes:
                    await self._accept_instant_room(room, ident)
                if room.listener() is occ:
                    await self._after_listener_join(room)
                self.log.debug("%s joined %s as %r", ident.user_id, room.jid, occ.nick)
                return
            condition, _, text = err.partition("\0")
            if condition == "conflict":
                continue
            occ.state = "left"
            reason = mucmod.JOIN_ERRORS.get(condition, condition)
            occ.last_error = reason
            if condition in ("forbidden", "registration-required", "not-authorized"):
                occ.wanted = False
            detail = f" ({text})" if text else ""
            raise ConnectorError(f"Could not join the XMPP room {room.jid}: {reason}{detail}.")
        occ.state = "left"
        raise ConnectorError(f"Could not join {room.jid}: no free nickname for {base!r}.")

    def presence_args(self, user_id: str) -> dict[str, Any]:
        show, status, _offline = self.c.presence.get(user_id, (None, None, False))
        return {"show": show, "status": status}

    async def _accept_instant_room(self, room: MucRoom, ident: Identity) -> None:
        iq = out.instant_room_iq(ident.xmpp, ifrom=ident.jid, room=room.jid)
        with contextlib.suppress(IqError, IqTimeout, NotConnected):
            await iq.send(timeout=10)

    async def _after_listener_join(self, room: MucRoom) -> None:
        portal = PortalKey(NETWORK, room.jid.bare)
        if room.sync_seen is not None:
            gone = [nick for nick in room.remote if nick not in room.sync_seen]
            room.sync_seen = None
            for nick in gone:
                ro = room.remote.pop(nick)
                await self.c.emit(
                    RemoteMembership(
                        portal=portal,
                        sender=Sender(ro.ghost_id, ro.nick),
                        membership=Membership.LEAVE,
                        reason="Left while the bridge was disconnected",
                    )
                )
        await self.emit_members(room)

    async def emit_members(self, room: MucRoom) -> None:
        """The room's occupants as a complete member list: the remote ones as ghosts with
        the power of their rank, and the bridge's own with the rank their users hold."""
        members = [
            ChatMember(Sender(ro.ghost_id, ro.nick), mucmod.power_level(ro.affiliation, ro.role))
            for ro in room.remote.values()
        ]
        members += [
            ChatMember(
                Sender(
                    occ.identity.jid.bare,
                    occ.nick,
                    is_from_me=True,
                    matrix_user=occ.identity.user_id,
                ),
                mucmod.power_level(occ.affiliation, occ.role),
            )
            for occ in room.ours.values()
            if occ.state == "joined"
        ]
        if not room.remote and not any(m.power_level for m in members):
            return
        await self.c.emit(
            RemoteChatInfo(
                portal=PortalKey(NETWORK, room.jid.bare),
                sender=Sender(room.jid.bare),
                members=members,
            )
        )

    def send_leave(self, occ: Occupant, status: str | None) -> None:
        if occ.state != "left" and occ.nick:
            with contextlib.suppress(NotConnected):
                occ.identity.stream.send(
                    out.leave_presence(
                        occ.identity.xmpp,
                        pfrom=occ.identity.jid,
                        occupant=occ.occupant_jid,
                        status=status,
                    )
                )
        occ.state = "left"

    async def leave(self, room: MucRoom, user_id: str, status: str | None = None) -> None:
        occ = room.ours.pop(user_id, None)
        if occ is None:
            return
        occ.wanted = False
        self.send_leave(occ, status)
        if occ.join_task is not None and not occ.join_task.done():
            occ.join_task.cancel()

    async def self_ping_loop(self) -> None:
        interval = self.cfg.self_ping_interval
        while not self.c.stopping:
            await asyncio.sleep(max(1.0, interval / 4))
            try:
                await self.self_ping_all(idle=interval)
            except Exception:
                self.log.exception("self-ping round failed")

    async def self_ping_all(self, idle: float = 0.0) -> int:
        """Self-ping every joined occupant of rooms silent for ``idle`` s; rejoin the ones
        that are no longer in their room. Returns how many were rejoined."""
        now = time.monotonic()
        checks = []
        for room in list(self.c.rooms.values()):
            if now - room.last_activity < idle:
                continue
            for occ in list(room.ours.values()):
                if occ.state == "joined":
                    checks.append(self._self_ping(room, occ))
                elif (
                    occ.state == "left"
                    and occ.wanted
                    and (occ.join_task is None or occ.join_task.done())
                    and occ.identity.stream.ready.is_set()
                ):
                    # A rejoin that failed earlier (the user was told then): try again.
                    checks.append(self._retry_join(room, occ))
        results = await asyncio.gather(*checks) if checks else []
        return sum(1 for r in results if r)

    async def _retry_join(self, room: MucRoom, occ: Occupant) -> bool:
        try:
            await self.join(room, occ.identity)
        except ConnectorError as e:
            self.log.info("%s still not in %s: %s", occ.identity.user_id, room.jid, e)
            return False
        except Exception:
            self.log.exception("rejoining %s for %s failed", room.jid, occ.identity.user_id)
            return False
        self.log.info("%s is back in %s", occ.identity.user_id, room.jid)
        return True

    async def _self_ping(self, room: MucRoom, occ: Occupant) -> bool:
        ident = occ.identity
        if not ident.stream.ready.is_set():
            return False
        iq = out.self_ping(ident.xmpp, ifrom=ident.jid, occupant=occ.occupant_jid)
        try:
            await iq.send(timeout=self.cfg.send_timeout)
            room.touch()
            return False
        except IqTimeout:
            return False  # inconclusive
        except IqError as e:
            condition = inc.error_text(e.iq)[0]
            if condition in ("service-unavailable", "feature-not-implemented"):
                room.touch()
                return False  # joined; the ping was just not answered by the client
            if condition in ("remote-server-not-found", "remote-server-timeout"):
                return False
        self.log.info("%s is no longer in %s; rejoining", ident.user_id, room.jid)
        occ.state = "left"
        await self.join_or_notify(room, ident, None)
        return True
