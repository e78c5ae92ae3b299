"""Nicks and avatars both ways: Matrix display names become occupant nicks (status 303),
Matrix avatars are served as vCard-temp with XEP-0153 hashes in presence, and XMPP users'
avatars become their ghosts' avatars."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from slixmpp import JID
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.stanza import Presence
from slixmpp.xmlstream import ET

from bridge.connector import (
    Attachment,
    MatrixProfile,
    PortalKey,
    RemoteProfile,
    Sender,
)

from . import avatars as avmod
from . import matrix_to_xmpp as out
from . import muc as mucmod
from . import xmpp_to_matrix as inc
from .component import NotConnected, serve_iq
from .identity import NETWORK, Identity
from .jid_mapping import InvalidMapping
from .muc import MucRoom, Occupant
from .part import Part

if TYPE_CHECKING:
    from .connector import XMPPConnector


class Profiles(Part):
    """Display names and avatars of puppets and ghosts."""

    def __init__(self, c: XMPPConnector) -> None:
        super().__init__(c)
        # Ghost id -> the avatar hash (XEP-0153) last set on its Matrix ghost.
        self.ghost_photos: OrderedDict[str, str] = OrderedDict()

    async def photo_of(self, identity: Identity) -> str | None:
        """The avatar hash a puppet's presence carries (None: not known; own accounts have
        their own avatar)."""
        if identity.login:
            return None
        user_id = identity.user_id
        known = self.c.avatars.known_hash(user_id)
        if known is None:
            known = await self.c.avatars.load(user_id)
        if known is None:
            # Asked once: "no avatar" is remembered too, until a profile change says otherwise.
            att = await self.c.bridge.matrix_avatar(user_id)
            await self.c.avatars.set(
                user_id, avmod.Avatar.of(att.data, att.mimetype) if att and att.data else None
            )
            known = self.c.avatars.known_hash(user_id)
        return known

    async def handle_profile(self, identity: Identity, change: MatrixProfile) -> None:
        """A Matrix user's new display name or avatar, seen in one portal: the occupant of
        that portal's MUC changes its nick (XEP-0045 §7.6) and announces the new avatar hash
        (XEP-0153); the vCard the component serves for the user's JID has the new picture."""
        user_id = identity.user_id
        if change.display_name:
            self.c.display_names[user_id] = change.display_name
        if not identity.login:
            if change.avatar is not None and change.avatar.data:
                avatar = avmod.Avatar.of(change.avatar.data, change.avatar.mimetype)
                if await self.c.avatars.set(user_id, avatar):
                    self._announce_avatar_to_contacts(identity)
            elif change.avatar_removed and await self.c.avatars.set(user_id, None):
                self._announce_avatar_to_contacts(identity)
        if change.portal.receiver:
            return
        room = self.c.rooms.get(change.portal.remote_id)
        occ = room.ours.get(user_id) if room is not None else None
        if room is None or occ is None or occ.identity is not identity:
            return
        if change.display_name:
            occ.display_name = change.display_name
        if occ.state != "joined" or not identity.stream.ready.is_set():
            return  # the next join uses the new name and avatar
        if change.display_name and await self._rename(room, occ, change.display_name):
            return  # the new nick's presence carried the avatar hash too
        photo = self.c.avatars.known_hash(user_id) if not identity.login else None
        if photo != occ.photo:
            occ.photo = photo
            with contextlib.suppress(NotConnected):
                identity.stream.send(self._occupant_presence(occ, occ.occupant_jid))

    def _occupant_presence(self, occ: Occupant, to: JID) -> Presence:
        ident = occ.identity
        return out.occupant_presence(
            ident.xmpp,
            pfrom=ident.jid,
            occupant=to,
            caps=None if ident.login else self.c.caps,
            photo=occ.photo,
            **self.c.joins.presence_args(ident.user_id),
        )

    def _announce_avatar_to_contacts(self, identity: Identity) -> None:
        self.c.pep.announce(identity)
        show, status, offline = self.c.presence.get(identity.user_id, (None, None, False))
        if offline or not identity.stream.ready.is_set():
            return
        for contact in self.c.roster.seeing(identity.jid.bare):
            pres = identity.xmpp.make_presence(pfrom=identity.jid, pto=contact)
            if show:
                pres["show"] = show
            if status:
                pres["status"] = status
            out.add_caps(pres, *self.c.caps)
            avmod.add_photo_update(pres, self.c.avatars.known_hash(identity.user_id))
            with contextlib.suppress(NotConnected):
                identity.stream.send(pres)

    async def _rename(self, room: MucRoom, occ: Occupant, display_name: str) -> bool:
        """Change an occupant's nick to follow a new display name, resolving conflicts as at
        join. Returns whether a presence went to the room."""
        ident = occ.identity
        fallback = ident.user_id[1:].split(":", 1)[0]
        base = mucmod.clean_nick(display_name, fallback)
        suffix = self.cfg.nick_conflict_suffix
        if occ.nick == base:
            return False
        loop = asyncio.get_running_loop()
        occ.photo = await self.photo_of(ident)
        for attempt in range(10):
            nick = mucmod.nick_candidate(base, suffix, attempt)
            if nick == occ.nick:
                return False  # already the best nick free for this name
            occ.pending_nick = nick
            occ.waiter = waiter = loop.create_future()
            try:
                ident.stream.send(self._occupant_presence(occ, JID(f"{room.jid.bare}/{nick}")))
                kind, _codes, err = await asyncio.wait_for(waiter, self.cfg.send_timeout)
            except NotConnected:
                return False
            except TimeoutError:
                self.log.info("%s: no answer to the nick change to %r", room.jid, nick)
                return True
            finally:
                occ.pending_nick = None
            if kind == "joined":
                self.log.debug("%s is now %r in %s", ident.user_id, occ.nick, room.jid)
                return True
            condition, _, text = err.partition("\0")
            if condition == "conflict":
                continue
            reason = mucmod.JOIN_ERRORS.get(condition, condition)
            await self.c.notify(
                ident.user_id,
                f"Your nickname in the XMPP room {room.jid} stays {occ.nick!r}: the room "
                f"refused {nick!r} ({reason}{': ' + text if text else ''}).",
                PortalKey(NETWORK, room.jid.bare),
            )
            return True
        return True

    def install_vcard(self) -> None:
        serve_iq(
            self.c.component_xmpp,
            "vcard",
            f"{{{avmod.NS_VCARD}}}vCard",
            lambda iq: self.c.spawn(self._answer_vcard(iq)),
        )

    async def _answer_vcard(self, iq: Any) -> None:
        """vCard-temp (XEP-0054) of a Matrix user's JID: the display name and the avatar."""
        itype = iq.xml.attrib.get("type")
        if itype not in ("get", "set"):
            return
        to = inc.stanza_jid(iq, "to")
        frm = inc.stanza_jid(iq, "from")
        if to is None or frm is None:
            return
        reply = self.c.component_xmpp.make_iq_result(iq.xml.attrib.get("id", ""), ito=frm, ifrom=to)
        if itype == "set":
            reply = self._iq_error(
                iq, to, frm, "forbidden", "vCards of Matrix users are read-only."
            )
        elif not to.user:
            reply.xml.append(avmod.vcard("Matrix bridge", None))
        else:
            try:
                user_id = self.c.mapper.matrix_user(to)
            except InvalidMapping as e:
                reply = self._iq_error(iq, to, frm, "item-not-found", str(e))
            else:
                if user_id in self.c.sessions or not await self.c.messages_in.user_exists(user_id):
                    reply = self._iq_error(iq, to, frm, "item-not-found", "No such Matrix user.")
                else:
                    ident = self.c.puppet(user_id)
                    await self.photo_of(ident)
                    avatar = await self.c.avatars.get(user_id)
                    name = await self.c.user_display_name(user_id)
                    reply.xml.append(avmod.vcard(name, avatar))
        with contextlib.suppress(NotConnected):
            self.c.component.send(reply)

    def _iq_error(self, iq: Any, to: JID, frm: JID, condition: str, text: str) -> Any:
        return self.c.component_xmpp.make_iq_error(
            iq.xml.attrib.get("id", ""),
            type="cancel",
            condition=condition,
            text=text,
            ito=frm,
            ifrom=to,
        )

    def avatar_seen(
        self, portal: PortalKey, sender: Sender, whose: JID, photo: str, via: JID
    ) -> None:
        """An XMPP user's presence announced an avatar hash: fetch the vCard (through the
        MUC for an occupant) unless the ghost already has that picture."""
        previous = self.ghost_photos.get(sender.remote_id)
        if previous == photo:
            return
        self.ghost_photos[sender.remote_id] = photo
        self.ghost_photos.move_to_end(sender.remote_id)
        while len(self.ghost_photos) > 10_000:
            self.ghost_photos.popitem(last=False)
        if photo:
            self.c.spawn(self._fetch_avatar(portal, sender, whose, photo, via))
        elif previous:  # an empty <photo/> after a picture: the user removed it
            self.c.spawn(
                self.c.emit(RemoteProfile(portal=portal, sender=sender, avatar_removed=True))
            )

    async def _fetch_avatar(
        self, portal: PortalKey, sender: Sender, whose: JID, photo: str, via: JID
    ) -> None:
        stream = self.c.component
        for session in self.c.sessions.values():
            if session.identity.jid == via:
                stream = session.identity.stream
        iq = stream.xmpp.make_iq_get(ito=whose, ifrom=via if stream is self.c.component else None)
        iq.xml.append(ET.Element(f"{{{avmod.NS_VCARD}}}vCard"))
        try:
            result = await iq.send(timeout=self.cfg.send_timeout)
        except (IqError, IqTimeout, NotConnected) as e:
            self.log.info("no vCard from %s: %s", whose, e)
            self.ghost_photos.pop(sender.remote_id, None)
            return
        avatar = avmod.vcard_photo(result.xml.find(f"{{{avmod.NS_VCARD}}}vCard"))
        if avatar is None:
            return
        if avatar.sha1 != photo:
            self.log.debug("vCard photo of %s does not match its hash", whose)
        ext = avatar.mimetype.rpartition("/")[2] or "img"
        await self.c.emit(
            RemoteProfile(
                portal=portal,
                sender=sender,
                avatar=Attachment(
                    f"avatar.{ext}", avatar.mimetype, data=avatar.data, size=len(avatar.data)
                ),
            )
        )
