"""Matrix to XMPP: messages, edits, redactions, reactions, typing, receipts, membership,
room metadata and presence, sent as the Matrix user's puppet or own account. What cannot be
sent while the server is unreachable waits in an outbox, and the user is told."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING

from slixmpp import JID
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.stanza import Message

from bridge.connector import (
    ConnectorError,
    MatrixEdit,
    MatrixMembership,
    MatrixMessage,
    MatrixReaction,
    MatrixReactionRemove,
    MatrixReceipt,
    MatrixRedaction,
    MatrixRoomMeta,
    MatrixTyping,
    Membership,
    NotSupported,
    PortalKey,
    SentMessage,
)

from . import avatars as avmod
from . import matrix_to_xmpp as out
from . import xmpp_to_matrix as inc
from .component import NotConnected
from .identity import NETWORK, Identity, Outgoing, conv_of, summary
from .idmap import MessageRecord
from .jid_mapping import parse_remote_user, parse_room_jid
from .moderation import Moderation
from .muc import MucRoom, Occupant
from .part import Part

if TYPE_CHECKING:
    from .connector import XMPPConnector

SHOW_FOR = {"online": None, "unavailable": "away"}


class MessagesOut(Part):
    """Sends what Matrix users do to XMPP."""

    def __init__(self, c: XMPPConnector) -> None:
        super().__init__(c)
        # Matrix actions held while the XMPP server is unreachable.
        self.outbox: deque[Outgoing] = deque()
        self.outage_notified: set[tuple[str, PortalKey]] = set()
        # Message id -> the future of its delivery answer (an error, or nothing).
        self.pending: dict[str, asyncio.Future[str | None]] = {}
        # Message id -> (Matrix user, portal, summary) of what the bridge sent, for errors.
        self.sent: OrderedDict[str, tuple[str, PortalKey, str]] = OrderedDict()
        # Origin-ids of groupchat messages sent and not reflected yet -> their stanza-id.
        self.echoes: OrderedDict[str, asyncio.Future[str | None]] = OrderedDict()
        # (room, nick) of occupants the bridge kicked or banned for a Matrix user: their
        # removal comes back from the room and must not be mirrored to Matrix a second time.
        self.own_removals: OrderedDict[tuple[str, str], float] = OrderedDict()
        # Moderations (XEP-0425) asked for by Matrix users, until the room announces them.
        self.moderation = Moderation(c.component_xmpp, c.cfg.domain, c.cfg.send_timeout)

    def _target(self, portal: PortalKey) -> tuple[JID, out.MsgType, MucRoom | None]:
        if portal.receiver:
            jid = parse_remote_user(portal.remote_id, self.cfg.domain)
            if jid is None:
                raise ConnectorError(f"{portal.remote_id} is not an XMPP address.")
            return jid, "chat", None
        room_jid = parse_room_jid(portal.remote_id)
        if room_jid is None:
            raise ConnectorError(f"{portal.remote_id} is not an XMPP room.")
        return room_jid, "groupchat", self.c.room_for(room_jid)

    async def _ensure_in_room(self, room: MucRoom, identity: Identity) -> Occupant:
        occ = room.ours.get(identity.user_id)
        if occ is not None and occ.identity is identity and occ.state == "joined":
            return occ
        return await self.c.joins.join(room, identity)

    async def _ready_or_queue(self, identity: Identity, portal: PortalKey) -> bool:
        if identity.stream.ready.is_set():
            return True
        return await identity.stream.wait_ready(self.cfg.outage_grace)

    async def _queue(self, item: Outgoing) -> None:
        self.outbox.append(item)
        key = (item.identity.user_id, item.portal)
        if key not in self.outage_notified:
            self.outage_notified.add(key)
            await self.c.notify(
                item.identity.user_id,
                "The XMPP server is not reachable right now. Your messages are kept and sent "
                "when the connection is back.",
                item.portal,
            )

    async def flush_outbox(self) -> None:
        pending = list(self.outbox)
        self.outbox.clear()
        for item in pending:
            if not item.identity.stream.ready.is_set():
                self.outbox.append(item)
                continue
            age = time.monotonic() - item.created
            if age > self.cfg.outbox_ttl:
                await self.c.notify(
                    item.identity.user_id,
                    f"Your message “{item.summary}” could not be delivered to XMPP "
                    f"(the server was unreachable for {int(age)} s).",
                    item.portal,
                )
                continue
            try:
                await self._send_now(item)
            except ConnectorError as e:
                await self.c.notify(
                    item.identity.user_id,
                    f"Your message “{item.summary}” was not delivered to XMPP: {e}",
                    item.portal,
                )

    async def _send_now(self, item: Outgoing) -> None:
        """Send a stanza without waiting for the MUC's reflection: the message keeps its
        origin-id as its id, and the room's stanza-id is added to its record when the
        reflection comes back (:meth:`_on_own_reflection`); an error the room answers
        instead is told to the user (:meth:`_on_message_error`)."""
        _mto, _mtype, room = self._target(item.portal)
        if room is not None:
            self.c.display_names.setdefault(item.identity.user_id, item.display_name)
            await self._ensure_in_room(room, item.identity)
        stanza = item.build()
        self._remember_sent(item.origin_id, item.identity.user_id, item.portal, item.summary)
        if room is not None:
            self.echoes[item.origin_id] = asyncio.get_running_loop().create_future()
            while len(self.echoes) > 10_000:
                _mid, old = self.echoes.popitem(last=False)
                if not old.done():
                    old.set_result(None)
        item.identity.stream.send(stanza)

    def _remember_sent(self, mid: str, user_id: str, portal: PortalKey, summary: str) -> None:
        self.sent[mid] = (user_id, portal, summary)
        while len(self.sent) > 10_000:
            self.sent.popitem(last=False)

    async def on_own_reflection(self, room: MucRoom, origin_id: str, stanza_id: str | None) -> None:
        """The MUC reflected a message the bridge sent: its stanza-id joins the record (the
        id the room and its occupants use for replies, reactions, markers and retractions)."""
        fut = self.echoes.pop(origin_id, None)
        if fut is None:
            return
        if stanza_id:
            conv = conv_of(PortalKey(NETWORK, room.jid.bare))
            rec = await self.c.ids.get(conv, origin_id)
            if rec is not None and rec.stanza_id is None:
                await self.c.ids.add(
                    MessageRecord(conv, rec.canonical, stanza_id, rec.origin_id, rec.sender)
                )
        if not fut.done():
            fut.set_result(stanza_id)

    async def _room_ref(self, portal: PortalKey, rec: MessageRecord) -> str:
        """The id that refers to a message in a MUC: its stanza-id (XEP-0359), waiting for
        the reflection of a message the bridge has just sent; its own id without one."""
        if rec.stanza_id is None and rec.origin_id:
            fut = self.echoes.get(rec.origin_id)
            if fut is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(fut), self.cfg.send_timeout)
                rec = await self._ref_ids(portal, rec.canonical)
        return rec.stanza_id or rec.canonical

    async def _deliver(self, item: Outgoing) -> str:
        """Send now, or queue through an outage. Returns the canonical id."""
        conv = conv_of(item.portal)
        if not await self._ready_or_queue(item.identity, item.portal):
            await self.c.ids.add(
                MessageRecord(conv, item.origin_id, None, item.origin_id, item.identity.key)
            )
            await self._queue(item)
            return item.origin_id
        await self.c.ids.add(
            MessageRecord(conv, item.origin_id, None, item.origin_id, item.identity.key)
        )
        try:
            await self._send_now(item)
        except NotConnected:
            await self._queue(item)
        return item.origin_id

    async def _ref_ids(self, portal: PortalKey, remote_id: str) -> MessageRecord:
        rec = await self.c.ids.get(conv_of(portal), remote_id)
        if rec is None:
            rec = MessageRecord(conv_of(portal), remote_id, remote_id, remote_id, "")
        return rec

    def _reply_to_jid(
        self, portal: PortalKey, room: MucRoom | None, sender: str | None
    ) -> str | None:
        if not sender:
            return None
        if room is None:
            return sender if "@" in sender or "." in sender else None
        ro = room.remote_by_ghost(sender)
        if ro is not None:
            return f"{room.jid.bare}/{ro.nick}"
        if sender.startswith(room.jid.bare + "/"):
            return sender
        return None

    async def send_message(self, identity: Identity, msg: MatrixMessage) -> SentMessage:
        mto, mtype, room = self._target(msg.portal)
        self.c.display_names[identity.user_id] = msg.sender.display_name
        content = msg.content
        body = out.body_for(content)
        if len(body.encode()) > self.cfg.max_message_bytes:
            try:
                link = await self.c.bridge.upload_text(body, "message.txt")
            except Exception as e:
                raise ConnectorError("The message is too long for XMPP.") from e
            preview = body[: min(300, self.cfg.max_message_bytes // 4)].rstrip()
            body = f"{preview}… (full message: {link})"
        items: list[tuple[str, str | None, str | None]] = []  # (body, oob url, desc)
        attachments = [a for a in content.attachments if a.url or a.mxc]
        for att in attachments:
            url = att.url or (self.c.bridge.mxc_to_url(att.mxc) if att.mxc else None)
            if url:
                items.append((url, url, att.filename))
        if content.attachments and not attachments:
            raise NotSupported("XMPP can only carry files as links, and this file has none.")
        caption = body.strip()
        if caption and not (attachments and caption in {a.filename for a in attachments}):
            items.insert(0, (body, None, None))
        if not items:
            raise ConnectorError("Nothing to send.")
        reply_ref = None
        if msg.reply_to is not None:
            reply_rec = await self._ref_ids(msg.portal, msg.reply_to.remote_id)
            reply_ref = (
                await self._room_ref(msg.portal, reply_rec)
                if room
                else (reply_rec.origin_id or reply_rec.canonical)
            )
        first_id: str | None = None
        for index, (text, url, desc) in enumerate(items):
            origin_id = out.new_id()

            def build(
                text: str = text,
                url: str | None = url,
                desc: str | None = desc,
                origin_id: str = origin_id,
                index: int = index,
            ) -> Message:
                stanza, _ = out.message(
                    identity.xmpp,
                    mfrom=identity.jid,
                    mto=mto,
                    mtype=mtype,
                    body=text,
                    msg_id=origin_id,
                )
                if url:
                    out.add_oob(stanza, url, desc)
                if index == 0 and reply_ref is not None and msg.reply_to is not None:
                    sender = msg.reply_to.sender_remote_id
                    to = self._reply_to_jid(msg.portal, room, sender)
                    quoted_nick = None
                    if room is not None and to and "/" in to:
                        quoted_nick = JID(to).resource
                    out.add_reply(stanza, reply_ref, to, msg.reply_to.text, quoted_nick)
                stanza["markable"] = True
                if mtype == "chat":
                    stanza["request_receipt"] = True
                    stanza["chat_state"] = "active"
                return stanza

            canonical = await self._deliver(
                Outgoing(
                    identity, msg.portal, msg.sender.display_name, origin_id, build, summary(text)
                )
            )
            first_id = first_id or canonical
        if msg.portal.receiver:
            self.c.known_dms.add(msg.portal)
        assert first_id is not None
        return SentMessage(remote_id=first_id)

    async def send_edit(self, identity: Identity, edit: MatrixEdit) -> SentMessage | None:
        mto, mtype, _room = self._target(edit.portal)
        rec = await self._ref_ids(edit.portal, edit.target.remote_id)
        body = out.body_for(edit.content)
        origin_id = out.new_id()

        def build() -> Message:
            stanza, _ = out.message(
                identity.xmpp,
                mfrom=identity.jid,
                mto=mto,
                mtype=mtype,
                body=body,
                msg_id=origin_id,
            )
            stanza["replace"]["id"] = rec.origin_id or rec.canonical
            return stanza

        await self._deliver(
            Outgoing(
                identity, edit.portal, edit.sender.display_name, origin_id, build, summary(body)
            )
        )
        return None

    async def send_redaction(self, identity: Identity, redaction: MatrixRedaction) -> None:
        mto, mtype, room = self._target(redaction.portal)
        rec = await self._ref_ids(redaction.portal, redaction.target.remote_id)
        own = rec.sender == identity.key or (
            redaction.target.sender_remote_id in (identity.jid.bare, identity.key)
        )
        if own or room is None:
            if not own:
                raise NotSupported("XMPP has no way to delete someone else's private message.")
            ref = (
                await self._room_ref(redaction.portal, rec)
                if room
                else (rec.origin_id or rec.canonical)
            )
            origin_id = out.new_id()

            def build() -> Message:
                stanza = out.retraction(
                    identity.xmpp, mfrom=identity.jid, mto=mto, mtype=mtype, target=ref
                )
                stanza["id"] = origin_id
                stanza["origin_id"]["id"] = origin_id
                return stanza

            await self._deliver(
                Outgoing(
                    identity,
                    redaction.portal,
                    redaction.sender.display_name,
                    origin_id,
                    build,
                    "(deletion)",
                )
            )
            return
        # Moderation: retract someone else's message in a MUC (XEP-0425).
        assert room is not None
        await self._ensure_in_room(room, identity)
        target = await self._room_ref(redaction.portal, rec)
        await self.moderation.retract(identity, room.jid, target, redaction.reason)

    async def _send_reactions(
        self,
        identity: Identity,
        portal: PortalKey,
        target_id: str,
        keys: frozenset[str],
        display_name: str,
    ) -> str:
        mto, mtype, room = self._target(portal)
        rec = await self._ref_ids(portal, target_id)
        ref = await self._room_ref(portal, rec) if room else (rec.origin_id or rec.canonical)
        await self.c.ids.set_reactions(conv_of(portal), identity.key, rec.canonical, keys)
        origin_id = out.new_id()

        def build() -> Message:
            stanza, _ = out.reactions(
                identity.xmpp, mfrom=identity.jid, mto=mto, mtype=mtype, target=ref, keys=keys
            )
            stanza["id"] = origin_id
            stanza["origin_id"]["id"] = origin_id
            return stanza

        await self._deliver(
            Outgoing(identity, portal, display_name, origin_id, build, "(reaction)")
        )
        return origin_id

    async def send_reaction(self, identity: Identity, reaction: MatrixReaction) -> SentMessage:
        rec = await self._ref_ids(reaction.portal, reaction.target.remote_id)
        current = await self.c.ids.reactions(conv_of(reaction.portal), identity.key, rec.canonical)
        rid = await self._send_reactions(
            identity,
            reaction.portal,
            reaction.target.remote_id,
            current | {reaction.key},
            reaction.sender.display_name,
        )
        return SentMessage(remote_id=rid)

    async def send_reaction_remove(self, identity: Identity, removal: MatrixReactionRemove) -> None:
        rec = await self._ref_ids(removal.portal, removal.target.remote_id)
        current = await self.c.ids.reactions(conv_of(removal.portal), identity.key, rec.canonical)
        await self._send_reactions(
            identity,
            removal.portal,
            removal.target.remote_id,
            current - {removal.key},
            removal.sender.display_name,
        )

    async def send_typing(self, identity: Identity, typing: MatrixTyping) -> None:
        mto, mtype, room = self._target(typing.portal)
        if not identity.stream.ready.is_set():
            return
        if room is not None:
            occ = room.ours.get(identity.user_id)
            if occ is None or occ.state != "joined":
                return
        stanza = out.chat_state(
            identity.xmpp,
            mfrom=identity.jid,
            mto=mto,
            mtype=mtype,
            state="composing" if typing.typing else "paused",
        )
        with contextlib.suppress(NotConnected):
            identity.stream.send(stanza)

    async def send_receipt(self, identity: Identity, receipt: MatrixReceipt) -> None:
        mto, mtype, room = self._target(receipt.portal)
        rec = await self._ref_ids(receipt.portal, receipt.target.remote_id)
        if rec.sender == identity.key or not identity.stream.ready.is_set():
            return
        if room is not None:
            occ = room.ours.get(identity.user_id)
            if occ is None or occ.state != "joined":
                return
            ref = rec.stanza_id or rec.canonical
        else:
            ref = rec.origin_id or rec.canonical
        stanza = out.displayed(identity.xmpp, mfrom=identity.jid, mto=mto, mtype=mtype, target=ref)
        with contextlib.suppress(NotConnected):
            identity.stream.send(stanza)

    async def handle_membership(self, identity: Identity, change: MatrixMembership) -> None:
        if change.portal.receiver:
            return
        _mto, _mtype, room = self._target(change.portal)
        assert room is not None
        if change.target is None:
            # The sender joins or leaves, or removes another Matrix user from the portal.
            who = change.target_matrix_user or identity.user_id
            if change.membership == Membership.JOIN and who == identity.user_id:
                self.c.display_names[identity.user_id] = change.sender.display_name
                await self.c.joins.join(room, identity)
            elif change.membership in (Membership.LEAVE, Membership.KICK, Membership.BAN):
                await self.c.joins.leave(room, who, change.reason)
            return
        ghost = change.target.remote_id
        ro = room.remote_by_ghost(ghost)
        if change.membership == Membership.INVITE:
            jid = parse_remote_user(ghost, self.cfg.domain)
            if jid is None or jid.resource:
                raise NotSupported("Only XMPP users (not anonymous occupants) can be invited.")
            await self._ensure_in_room(room, identity)
            identity.stream.send(
                out.invite(
                    identity.xmpp,
                    mfrom=identity.jid,
                    room=room.jid,
                    to=jid.bare,
                    reason=change.reason,
                )
            )
            return
        removal: tuple[str, str] | None = None
        if change.membership == Membership.KICK:
            if ro is None:
                raise ConnectorError("That XMPP user is not in the room.")
            item = {"nick": ro.nick, "role": "none"}
            removal = (room.jid.bare, ro.nick)
        elif change.membership in (Membership.BAN, Membership.UNBAN):
            real = ro.real_jid if ro else None
            if real is None and "/" not in ghost:
                real = ghost
            if real is None:
                raise NotSupported("The XMPP user's address is hidden in this room; cannot ban.")
            bare = JID(real).bare
            affiliation = "outcast" if change.membership == Membership.BAN else "none"
            item = {"jid": bare, "affiliation": affiliation}
            if ro is not None and change.membership == Membership.BAN:
                removal = (room.jid.bare, ro.nick)
        else:
            return
        await self._ensure_in_room(room, identity)
        iq = out.admin_iq(
            identity.xmpp, ifrom=identity.jid, room=room.jid, item=item, reason=change.reason
        )
        if removal is not None:
            self.own_removals[removal] = time.monotonic()
            while len(self.own_removals) > 1000:
                self.own_removals.popitem(last=False)
        try:
            await iq.send(timeout=self.cfg.send_timeout)
        except IqError as e:
            if removal is not None:
                self.own_removals.pop(removal, None)
            condition = inc.error_text(e.iq)[0]
            raise ConnectorError(
                f"The XMPP room refused the {change.membership.value} ({condition})."
            ) from e
        except IqTimeout as e:
            if removal is not None:
                self.own_removals.pop(removal, None)
            raise ConnectorError("The XMPP room did not answer.") from e

    async def send_room_meta(self, identity: Identity, change: MatrixRoomMeta) -> None:
        _mto, _mtype, room = self._target(change.portal)
        if room is None:
            return
        if change.topic is not None:
            await self._ensure_in_room(room, identity)
            await self._set_subject(identity, room, change.topic)
        if change.name is not None or change.avatar is not None:
            raise NotSupported("Room names and avatars are not changed on XMPP by the bridge.")

    async def _set_subject(self, identity: Identity, room: MucRoom, text: str) -> None:
        """Change the MUC subject and wait for the room's answer: the reflected subject, or
        an error (occupants without the right to change it get ``forbidden``)."""
        stanza = out.subject(identity.xmpp, mfrom=identity.jid, room=room.jid, text=text)
        mid = out.new_id()
        stanza["id"] = mid
        stanza["origin_id"]["id"] = mid
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.pending[mid] = fut
        previous = room.subject
        room.subject = text  # the reflection is not a change to bridge back
        try:
            identity.stream.send(stanza)
            await asyncio.wait_for(fut, self.cfg.send_timeout)
        except NotConnected as e:
            room.subject = previous
            raise ConnectorError("The XMPP server is not reachable right now.") from e
        except TimeoutError as e:
            raise ConnectorError("The XMPP room did not answer the subject change.") from e
        except ConnectorError as e:
            room.subject = previous
            raise ConnectorError(f"The XMPP room refused the subject change ({e.args[0]}).") from e
        finally:
            self.pending.pop(mid, None)

    def broadcast_presence(
        self, identity: Identity, show: str | None, status: str | None, offline: bool
    ) -> None:
        xmpp = identity.xmpp
        for room in self.c.rooms.values():
            occ = room.ours.get(identity.user_id)
            if occ is None or occ.state != "joined" or occ.identity is not identity:
                continue
            pres = xmpp.make_presence(pfrom=identity.jid, pto=occ.occupant_jid)
            if offline:
                pres["show"] = "xa"
            elif show:
                pres["show"] = show
            if status:
                pres["status"] = status
            if not identity.login:
                out.add_caps(pres, *self.c.caps)
                occ.photo = self.c.avatars.known_hash(identity.user_id)
                avmod.add_photo_update(pres, occ.photo)
            with contextlib.suppress(NotConnected):
                identity.stream.send(pres)
        if identity.login:
            with contextlib.suppress(Exception):
                xmpp.send_presence(pshow=show, pstatus=status)
            return
        for contact in self.c.roster.seeing(identity.jid.bare):
            pres = xmpp.make_presence(
                pfrom=identity.jid, pto=contact, ptype="unavailable" if offline else None
            )
            if show and not offline:
                pres["show"] = show
            if status:
                pres["status"] = status
            out.add_caps(pres, *self.c.caps)
            if not offline:
                avmod.add_photo_update(pres, self.c.avatars.known_hash(identity.user_id))
            with contextlib.suppress(NotConnected):
                identity.stream.send(pres)

    async def send_presence(self, identity: Identity, presence: str, status: str | None) -> None:
        offline = presence == "offline"
        show = SHOW_FOR.get(presence)
        self.c.presence[identity.user_id] = (show, status, offline)
        if identity.stream.ready.is_set():
            self.broadcast_presence(identity, show, status, offline)
