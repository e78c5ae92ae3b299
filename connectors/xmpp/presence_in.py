"""XMPP presence to Matrix: the puppets' own MUC presence (joined, renamed, kicked,
banned: status codes 110, 201, 210, 303, 307, 301, 321, 322, 333), other occupants' joins,
leaves, roles and affiliations, and contacts' availability. Subscription stanzas and probes to
the component go to roster.py."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from slixmpp import JID
from slixmpp.stanza import Presence

from bridge.connector import (
    Membership,
    PortalKey,
    RemoteMembership,
    RemotePresence,
    RemoteProfile,
    Sender,
)

from . import avatars as avmod
from . import muc as mucmod
from . import xmpp_to_matrix as inc
from .component import Stream
from .identity import NETWORK
from .jid_mapping import InvalidMapping
from .muc import MucRoom, Occupant, RemoteOccupant
from .part import Part
from .roster import ROSTER_TYPES

if TYPE_CHECKING:
    pass

PRESENCE_FOR_SHOW = {
    None: "online",
    "": "online",
    "chat": "online",
    "away": "unavailable",
    "xa": "unavailable",
    "dnd": "unavailable",
}


class PresenceIn(Part):
    """Reads presence stanzas and mirrors them to Matrix."""

    async def on_presence(self, stream: Stream, pres: Presence) -> None:
        frm = inc.stanza_jid(pres, "from")
        to = inc.stanza_jid(pres, "to")
        if frm is None or to is None:
            return
        ptype = pres.xml.attrib.get("type", "available")
        room = self.c.rooms.get(frm.bare)
        if room is not None:
            await self._on_muc_presence(room, pres, frm, to, ptype)
            return
        if ptype in ROSTER_TYPES:
            # Subscriptions and probes (and errors, which may answer a subscription request):
            # the component answers for its puppets (roster.py); an own account's server
            # does that itself.
            if stream is self.c.component:
                await self.c.roster.on_presence(ptype, frm, to)
            return
        user_id = self.user_for(stream, to)
        if user_id is None:
            return
        if ptype not in ("available", "unavailable"):
            return
        portal = PortalKey(NETWORK, frm.bare, receiver=user_id)
        if portal not in self.c.known_dms:
            return
        if ptype == "unavailable":
            presence = "offline"
        else:
            presence = PRESENCE_FOR_SHOW.get(
                pres.xml.findtext(f"{{{pres.namespace}}}show"), "online"
            )
        status = pres.xml.findtext(f"{{{pres.namespace}}}status")
        if ptype == "available":
            photo = avmod.photo_hash(pres.xml)
            self.c.pep.seen(portal, Sender(frm.bare), JID(frm.bare), photo, to, JID(frm.bare))
        await self.c.emit(
            RemotePresence(portal=portal, sender=Sender(frm.bare), presence=presence, status=status)
        )

    def user_for(self, stream: Stream, to: JID) -> str | None:
        if stream is self.c.component:
            try:
                return self.c.mapper.matrix_user(to)
            except InvalidMapping:
                return None
        for user_id, session in self.c.sessions.items():
            if session.identity.stream is stream:
                return user_id
        return None

    def muc_codes(self, stanza: Any) -> set[int]:
        codes: set[int] = set()
        x = stanza.xml.find(f"{{{inc.NS_MUC_USER}}}x")
        if x is None:
            return codes
        for st in x.findall(f"{{{inc.NS_MUC_USER}}}status"):
            with contextlib.suppress(ValueError, TypeError):
                codes.add(int(st.attrib.get("code", "")))
        return codes

    def _muc_item(self, pres: Presence) -> dict[str, str | None]:
        x = pres.xml.find(f"{{{inc.NS_MUC_USER}}}x")
        item = x.find(f"{{{inc.NS_MUC_USER}}}item") if x is not None else None
        if item is None:
            return {}
        actor = item.find(f"{{{inc.NS_MUC_USER}}}actor")
        reason = item.find(f"{{{inc.NS_MUC_USER}}}reason")
        return {
            "role": item.attrib.get("role"),
            "affiliation": item.attrib.get("affiliation"),
            "jid": item.attrib.get("jid"),
            "nick": item.attrib.get("nick"),
            "actor": actor.attrib.get("nick") if actor is not None else None,
            "actor_jid": actor.attrib.get("jid") if actor is not None else None,
            "reason": reason.text if reason is not None else None,
        }

    async def _on_muc_presence(
        self, room: MucRoom, pres: Presence, frm: JID, to: JID, ptype: str
    ) -> None:
        occ = room.by_identity_jid(to)
        if occ is None:
            return
        nick = frm.resource
        codes = self.muc_codes(pres)
        portal = PortalKey(NETWORK, room.jid.bare)
        if ptype == "error":
            condition, text = inc.error_text(pres)
            if occ.waiter is not None and not occ.waiter.done():
                occ.waiter.set_result(("error", codes, f"{condition}\0{text}"))
            else:
                self.log.info("presence error from %s for %s: %s", frm, to, condition)
            return
        if mucmod.SELF in codes or (nick == occ.nick and occ.state == "joining"):
            await self._on_self_presence(room, occ, pres, nick, ptype, codes, portal)
            return
        if room.by_nick(nick) is not None and room.by_nick(nick) is not occ:
            return  # one of the bridge's own occupants
        if not nick or room.listener() is not occ:
            return
        room.touch()
        await self._on_remote_occupant(room, pres, nick, frm, ptype, codes, portal)

    async def _on_self_presence(
        self,
        room: MucRoom,
        occ: Occupant,
        pres: Presence,
        nick: str,
        ptype: str,
        codes: set[int],
        portal: PortalKey,
    ) -> None:
        item = self._muc_item(pres)
        if ptype == "unavailable":
            if mucmod.NICK_CHANGED in codes and item.get("nick"):
                occ.nick = item["nick"]
                return
            was_joined = occ.state == "joined"
            occ.state = "left"
            removed = codes & {
                mucmod.KICKED,
                mucmod.BANNED,
                mucmod.REMOVED_AFFILIATION,
                mucmod.REMOVED_MEMBERS_ONLY,
            }
            if removed:
                occ.wanted = False
                room.ours.pop(occ.identity.user_id, None)
                membership = Membership.BAN if mucmod.BANNED in codes else Membership.KICK
                actor = item.get("actor")
                reason = item.get("reason")
                what = "banned from" if membership == Membership.BAN else "removed from"
                by = f" by {actor}" if actor else ""
                because = f": {reason}" if reason else ""
                if not reason and mucmod.REMOVED_MEMBERS_ONLY in codes:
                    because = ": the room is now members-only and you are not a member"
                elif not reason and mucmod.REMOVED_AFFILIATION in codes:
                    because = ": you are no longer a member of this members-only room"
                await self.c.notify(
                    occ.identity.user_id,
                    f"You were {what} the XMPP room {room.jid}{by}{because}.",
                    portal,
                )
                await self.c.emit(
                    RemoteMembership(
                        portal=portal,
                        sender=actor_of(room, actor),
                        membership=membership,
                        target=Sender(
                            occ.identity.jid.bare,
                            occ.nick,
                            is_from_me=True,
                            matrix_user=occ.identity.user_id,
                        ),
                        reason=reason,
                    )
                )
                return
            if mucmod.SHUTDOWN in codes:
                occ.wanted = False
                await self.c.notify(
                    occ.identity.user_id, f"The XMPP service of {room.jid} shut down.", portal
                )
                return
            if was_joined and occ.wanted and not self.c.stopping:
                # Removed for a technical reason (333) or without explanation: rejoin.
                self.log.info(
                    "%s dropped from %s (codes %s); rejoining",
                    occ.identity.user_id,
                    room.jid,
                    sorted(codes),
                )
                self.c.spawn(self._rejoin_later(room, occ))
            return
        if occ.pending_nick is not None and nick != occ.pending_nick:
            return  # a presence of the old nick while the new one is on its way
        occ.nick = nick  # the room may have changed it (status 210)
        rank = (item.get("affiliation") or occ.affiliation, item.get("role") or occ.role)
        # A rank given or taken in the room (or held when joining) is the user's power in
        # the portal; the member list says so once the room's occupants are known.
        if occ.state == "joined":
            ranked = rank != (occ.affiliation, occ.role)
        else:
            ranked = mucmod.power_level(*rank) > 0
        occ.affiliation, occ.role = rank
        if occ.waiter is not None and not occ.waiter.done():
            occ.waiter.set_result(("joined", codes, ""))
        if mucmod.NON_ANONYMOUS in codes:
            room.non_anonymous = True
        listener = room.listener()
        if (
            ranked
            and listener is not None
            and listener.state == "joined"
            and room.sync_seen is None
        ):
            await self.c.joins.emit_members(room)

    async def _rejoin_later(self, room: MucRoom, occ: Occupant) -> None:
        await asyncio.sleep(1)
        if occ.wanted and occ.state == "left" and room.ours.get(occ.identity.user_id) is occ:
            await self.c.joins.join_or_notify(room, occ.identity, None)

    def ghost_for(self, room: MucRoom, nick: str, real: str | None) -> str:
        if real:
            jid = inc.safe_jid(real)
            if jid is not None and jid.domain != self.cfg.domain:
                return jid.bare
        return f"{room.jid.bare}/{nick}"

    async def _on_remote_occupant(
        self,
        room: MucRoom,
        pres: Presence,
        nick: str,
        frm: JID,
        ptype: str,
        codes: set[int],
        portal: PortalKey,
    ) -> None:
        item = self._muc_item(pres)
        real = item.get("jid")
        if real:
            real_jid = inc.safe_jid(real)
            if real_jid is not None and real_jid.domain == self.cfg.domain:
                return  # another Matrix user's puppet seen from a different room view
        ghost = self.ghost_for(room, nick, real)
        if ptype == "unavailable":
            ro = room.remote.pop(nick, None)
            ghost = ro.ghost_id if ro else ghost
            if mucmod.NICK_CHANGED in codes and item.get("nick"):
                new_nick = str(item["nick"])
                if ro is None:
                    ro = RemoteOccupant(nick, ghost, real)
                ro.nick = new_nick
                room.remote[new_nick] = ro
                if room.sync_seen is not None:
                    room.sync_seen.add(new_nick)
                if ro.real_jid or ghost != f"{room.jid.bare}/{nick}":
                    await self.c.emit(
                        RemoteProfile(
                            portal=portal, sender=Sender(ghost, nick), display_name=new_nick
                        )
                    )
                else:
                    ro.ghost_id = f"{room.jid.bare}/{new_nick}"
                    await self.c.emit(
                        RemoteProfile(
                            portal=portal,
                            sender=Sender(ghost, nick),
                            display_name=new_nick,
                            new_remote_id=ro.ghost_id,
                        )
                    )
                return
            if ro is None:
                return
            actor = item.get("actor")
            reason = item.get("reason")
            # A kick or ban the bridge made for a Matrix user already happened in Matrix.
            ours = self.c.messages_out.own_removals.pop((room.jid.bare, nick), None) is not None
            if (mucmod.KICKED in codes or mucmod.BANNED in codes) and not ours:
                membership = Membership.BAN if mucmod.BANNED in codes else Membership.KICK
                await self.c.emit(
                    RemoteMembership(
                        portal=portal,
                        sender=actor_of(room, actor),
                        membership=membership,
                        target=Sender(ghost, nick),
                        reason=reason,
                    )
                )
                return
            status = pres.xml.findtext(f"{{{pres.namespace}}}status")
            if mucmod.REMOVED_TECHNICAL in codes:
                status = status or "Disconnected"
            if ours:
                status = reason or status
            await self.c.emit(
                RemoteMembership(
                    portal=portal,
                    sender=Sender(ghost, nick),
                    membership=Membership.LEAVE,
                    reason=status or None,
                )
            )
            return
        role = item.get("role") or "participant"
        affiliation = item.get("affiliation") or "none"
        if room.sync_seen is not None:
            room.sync_seen.add(nick)
        ro = room.remote.get(nick)
        photo = avmod.photo_hash(pres.xml)
        listener = room.listener()
        if listener is not None and (ro is None or (photo is not None and ro.photo != photo)):
            sender = Sender(ro.ghost_id if ro else ghost, nick)
            # A ghost named by a real JID (see _ghost_for) has a PEP service to read.
            whose = JID(sender.remote_id) if "/" not in sender.remote_id else None
            self.c.pep.seen(portal, sender, whose, photo, listener.identity.jid, frm)
        if ro is None:
            ro = RemoteOccupant(nick, ghost, real, role, affiliation, photo)
            room.remote[nick] = ro
            await self.c.emit(
                RemoteMembership(
                    portal=portal, sender=Sender(ghost, nick), membership=Membership.JOIN
                )
            )
            listener = room.listener()
            if (
                listener is not None
                and listener.state == "joined"
                and (mucmod.power_level(affiliation, role) > 0)
            ):
                await self.c.joins.emit_members(room)
            return
        if photo is not None:
            ro.photo = photo
        if (ro.role, ro.affiliation) != (role, affiliation):
            ro.role, ro.affiliation = role, affiliation
            await self.c.joins.emit_members(room)


def actor_of(room: MucRoom, actor: str | None) -> Sender:
    """Who kicked or banned: the ghost of the remote occupant with the nick ``actor``, or the
    room itself (no actor named, or one of the bridge's own occupants)."""
    ro = room.remote.get(actor) if actor else None
    return Sender(ro.ghost_id, ro.nick) if ro else Sender(room.jid.bare, room.name)
