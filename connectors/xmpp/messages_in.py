"""XMPP messages to Matrix: groupchat and chat messages, carbons of a logged-in user's own
messages, delivery errors, corrections, reactions, retractions and moderation, chat states,
receipts and markers, each turned into the connector contract's remote events."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from slixmpp import JID
from slixmpp.stanza import Message

from bridge.connector import (
    ConnectorError,
    PortalKey,
    RemoteChatInfo,
    RemoteEdit,
    RemoteMessage,
    RemoteReaction,
    RemoteReactionRemove,
    RemoteReceipt,
    RemoteRedaction,
    RemoteTyping,
    Sender,
)

from . import matrix_to_xmpp as out
from . import muc as mucmod
from . import xmpp_to_matrix as inc
from .component import (
    NotConnected,
    Stream,
)
from .identity import NETWORK, conv_of
from .idmap import MessageRecord
from .jid_mapping import InvalidMapping
from .moderation import moderator
from .muc import MucRoom
from .part import Part
from .pep import NS_PUBSUB_EVENT

if TYPE_CHECKING:
    pass


class MessagesIn(Part):
    """Turns messages from the XMPP side into remote events."""

    async def _on_carbon_sent(self, stream: Stream, wrapper: Message) -> None:
        """A message the logged-in user sent from another client: shown as theirs."""
        try:
            msg = wrapper["carbon_sent"]
        except Exception:
            return
        user_id = self.c.presence_in.user_for(stream, stream.xmpp.boundjid)
        to = inc.stanza_jid(msg, "to")
        if user_id is None or to is None or msg.xml.attrib.get("type") in ("groupchat", "error"):
            return
        if to.domain == self.cfg.domain:
            return  # to a Matrix user's puppet: the component receives it and bridges it
        ids = inc.message_ids(msg, None)
        key = ids.origin or ids.attr
        if key and key in self.c.messages_out.sent:
            # Servers carbon a message to the account's other resources, not to the one that
            # sent it; a copy of the bridge's own message is its echo all the same.
            return
        remote = to.bare
        if to.bare in self.c.rooms and to.resource:
            remote = str(to)  # a private message to a MUC occupant
        portal = PortalKey(NETWORK, remote, receiver=user_id)
        sender = Sender(
            stream.xmpp.boundjid.bare, is_from_me=True, matrix_user=user_id, from_other_client=True
        )
        await self._process(stream, msg, portal, sender, ids, to, group=False)

    async def on_message(self, stream: Stream, msg: Message) -> None:
        if inc.is_mam_result(msg):
            return
        if msg.xml.find(f"{{{NS_PUBSUB_EVENT}}}event") is not None:
            await self.c.pep.on_event(stream, msg)
            return
        if msg.xml.find("{urn:xmpp:carbons:2}sent") is not None:
            if inc.stanza_jid(msg, "from") == JID(stream.xmpp.boundjid.bare):
                await self._on_carbon_sent(stream, msg)
            return
        if msg.xml.find("{urn:xmpp:carbons:2}received") is not None:
            try:
                inner = msg["carbon_received"]
            except Exception:
                return
            if inc.stanza_jid(msg, "from") != JID(stream.xmpp.boundjid.bare):
                return  # forged carbon
            msg = inner
        frm = inc.stanza_jid(msg, "from")
        to = inc.stanza_jid(msg, "to")
        if frm is None or to is None:
            self.log.info("dropping a message with a missing or invalid address")
            return
        mtype = msg.xml.attrib.get("type", "normal")
        if mtype == "error":
            await self._on_message_error(stream, msg, frm, to)
            return
        room = self.c.rooms.get(frm.bare)
        if mtype == "groupchat":
            if room is not None:
                await self._on_groupchat(stream, room, msg, frm, to)
            return
        if room is not None and not frm.resource:
            codes = self.c.presence_in.muc_codes(msg)
            if mucmod.CONFIG_CHANGED in codes:
                self.c.spawn(self._refresh_room_info(room))
            return
        await self._on_direct(stream, msg, frm, to)

    async def _refresh_room_info(self, room: MucRoom) -> None:
        info = await self.c.resolve_portal(PortalKey(NETWORK, room.jid.bare), None)
        if info is not None:
            await self.c.emit(
                RemoteChatInfo(
                    portal=PortalKey(NETWORK, room.jid.bare),
                    sender=Sender(room.jid.bare),
                    name=info.name,
                )
            )

    async def _on_message_error(self, stream: Stream, msg: Message, frm: JID, to: JID) -> None:
        mid = msg.xml.attrib.get("id") or ""
        condition, text = inc.error_text(msg)
        readable = f"{condition}" + (f": {text}" if text else "")
        fut = self.c.messages_out.pending.get(mid)
        if fut is not None and not fut.done():
            fut.set_exception(ConnectorError(readable))
            return
        echo = self.c.messages_out.echoes.pop(mid, None)
        if echo is not None and not echo.done():
            echo.set_result(None)
        sent = self.c.messages_out.sent.get(mid)
        room = self.c.rooms.get(frm.bare)
        if room is not None and condition == "not-acceptable":
            occ = room.by_identity_jid(to)
            if occ is not None and occ.wanted:
                occ.state = "left"
                self.c.spawn(self.c.joins.join_or_notify(room, occ.identity, None))
        if sent is not None:
            user_id, portal, summary = sent
            await self.c.notify(
                user_id, f"Your message “{summary}” was not delivered on XMPP ({readable}).", portal
            )

    async def _on_groupchat(
        self, stream: Stream, room: MucRoom, msg: Message, frm: JID, to: JID
    ) -> None:
        receiver = room.by_identity_jid(to)
        if receiver is None:
            return
        nick = frm.resource
        ids = inc.message_ids(msg, room.jid.bare)
        ours = room.by_nick(nick) if nick else None
        key = ids.origin or ids.attr
        if ours is not None and key:
            fut = self.c.messages_out.pending.get(key)
            if fut is not None and not fut.done():
                fut.set_result(ids.stanza)
            if key in self.c.messages_out.echoes:
                await self.c.messages_out.on_own_reflection(room, key, ids.stanza)
        if not room.claim(
            msg.xml.attrib.get("from", ""), msg.xml.attrib.get("id"), msg.xml.attrib.get("to", "")
        ):
            return  # another copy of the message is the one read
        room.touch()
        portal = PortalKey(NETWORK, room.jid.bare)
        conv = conv_of(portal)
        if not nick:
            subj = inc.subject(msg)
            if subj is not None and not inc.body_text(msg):
                if (subj or None) != (room.subject or None):
                    room.subject = subj
                    await self.c.emit(
                        RemoteChatInfo(portal=portal, sender=Sender(room.jid.bare), topic=subj)
                    )
                return
            retraction = inc.retraction(msg)
            if retraction is not None and retraction.moderated_by is not None:
                if self.c.messages_out.moderation.announced(room.jid, retraction.target):
                    return  # asked for by a Matrix user: deleted on Matrix already
                await self.c.emit(
                    RemoteRedaction(
                        portal=portal,
                        sender=moderator(room, retraction.moderated_by),
                        target_id=await self.c.ids.canonical(conv, retraction.target),
                        reason=retraction.reason,
                    )
                )
                return
            content = inc.message_content(msg, self.cfg.max_message_bytes)
            if content is not None:
                content.kind = inc.MessageKind.NOTICE
                await self.c.emit(
                    RemoteMessage(
                        portal=portal,
                        sender=Sender(room.jid.bare, room.name),
                        id=ids.canonical()
                        or inc.synthesized_id(str(frm), content.text, inc.timestamp(msg)),
                        content=content,
                        timestamp=inc.timestamp(msg),
                    )
                )
            return
        if ours is not None:
            if key and key in self.c.messages_out.sent:
                return  # the reflection of a message the bridge sent
            if not ours.identity.login:
                return
            # Not sent by the bridge, from the user's own nick: another client of their
            # account shares the occupant (servers join one account's sessions to one nick).
            sender = Sender(
                ours.identity.jid.bare,
                nick,
                is_from_me=True,
                matrix_user=ours.identity.user_id,
                from_other_client=True,
            )
        else:
            ro = room.remote.get(nick)
            sender = Sender(ro.ghost_id if ro else f"{room.jid.bare}/{nick}", nick)
        subj = inc.subject(msg)
        if subj is not None and not inc.body_text(msg):
            if (subj or None) != (room.subject or None):
                room.subject = subj
                await self.c.emit(RemoteChatInfo(portal=portal, sender=sender, topic=subj))
            return
        await self._process(stream, msg, portal, sender, ids, to, group=True)

    async def _on_direct(self, stream: Stream, msg: Message, frm: JID, to: JID) -> None:
        if stream is self.c.component:
            if not to.user:
                if inc.body_text(msg):
                    self._bounce(
                        stream,
                        msg,
                        "service-unavailable",
                        "This is a Matrix bridge. Write to <user>\\40<homeserver>@"
                        f"{self.cfg.domain} to reach the Matrix user @<user>:<homeserver>.",
                    )
                return
            try:
                user_id = self.c.mapper.matrix_user(to)
            except InvalidMapping as e:
                if inc.body_text(msg):
                    self._bounce(
                        stream, msg, "jid-malformed", f"No Matrix user has this address ({e})."
                    )
                return
            if not await self.user_exists(user_id):
                if inc.body_text(msg):
                    self._bounce(stream, msg, "item-not-found", f"Unknown Matrix user {user_id}.")
                return
        else:
            found = self.c.presence_in.user_for(stream, to)
            if found is None:
                return
            user_id = found
        remote = frm.bare
        if frm.bare in self.c.rooms and frm.resource:
            remote = str(frm)  # a private message from a MUC occupant
        portal = PortalKey(NETWORK, remote, receiver=user_id)
        sender = Sender(remote, inc.nick_from_message(msg))
        if remote == frm.bare:
            self.c.pep.seen(portal, Sender(remote), JID(remote), None, to, JID(remote))
        ids = inc.message_ids(msg, None)
        if inc.body_text(msg) and inc.is_oversized(msg, self.cfg.max_message_bytes):
            self._bounce(
                stream,
                msg,
                "not-acceptable",
                f"The message is too long for the bridge (limit {self.cfg.max_message_bytes}"
                " bytes).",
                etype="modify",
            )
            return
        await self._process(stream, msg, portal, sender, ids, to, group=False)

    async def user_exists(self, user_id: str) -> bool:
        try:
            user = await self.c.bridge.matrix_user(user_id)
        except Exception:
            return False
        return user is not None

    def _bounce(
        self, stream: Stream, msg: Message, condition: str, text: str, etype: str = "cancel"
    ) -> None:
        with contextlib.suppress(NotConnected, Exception):
            stream.send(out.error_reply(stream.xmpp, msg, condition, text, etype))

    async def _process(
        self,
        stream: Stream,
        msg: Message,
        portal: PortalKey,
        sender: Sender,
        ids: inc.Ids,
        to: JID,
        group: bool,
    ) -> None:
        """Everything a chat or groupchat message can carry, in order of precedence."""
        conv = conv_of(portal)
        stamp = inc.timestamp(msg)
        # A Matrix user's account also retracts what the bridge sent for them.
        theirs = {sender.remote_id}
        if sender.is_from_me and sender.matrix_user:
            theirs.add(f"matrix:{sender.matrix_user}")
        retraction = inc.retraction(msg)
        if retraction is not None:
            rec = await self.c.ids.get(conv, retraction.target)
            if rec is not None and rec.sender not in theirs and retraction.moderated_by is None:
                self.log.info("ignoring a retraction by %s of a message it did not send", sender)
                return
            await self.c.emit(
                RemoteRedaction(
                    portal=portal,
                    sender=sender,
                    target_id=rec.canonical if rec else retraction.target,
                    reason=retraction.reason,
                    timestamp=stamp,
                )
            )
            return
        reacted = inc.reactions(msg)
        if reacted is not None:
            target_ref, keys = reacted
            target = await self.c.ids.canonical(conv, target_ref)
            before = await self.c.ids.reactions(conv, sender.remote_id, target)
            await self.c.ids.set_reactions(conv, sender.remote_id, target, keys)
            for key in sorted(keys - before):
                await self.c.emit(
                    RemoteReaction(
                        portal=portal,
                        sender=sender,
                        target_id=target,
                        key=key,
                        id=ids.canonical(),
                        timestamp=stamp,
                    )
                )
            for key in sorted(before - keys):
                await self.c.emit(
                    RemoteReactionRemove(
                        portal=portal, sender=sender, target_id=target, key=key, timestamp=stamp
                    )
                )
            return
        content = inc.message_content(msg, self.cfg.max_message_bytes)
        corrected = inc.correction_target(msg)
        if corrected is not None and content is not None:
            rec = await self.c.ids.get(conv, corrected)
            if rec is not None and rec.sender != sender.remote_id:
                self.log.info("ignoring a correction by %s of a message it did not send", sender)
                return
            await self.c.emit(
                RemoteEdit(
                    portal=portal,
                    sender=sender,
                    target_id=rec.canonical if rec else corrected,
                    content=content,
                    id=ids.canonical(),
                    timestamp=stamp,
                )
            )
            return
        if content is not None:
            mid = ids.canonical() or inc.synthesized_id(sender.remote_id, content.text, stamp)
            reply_to = None
            reply = inc.reply_target(msg)
            if reply is not None:
                reply_to = await self.c.ids.canonical(conv, reply[0])
            await self.c.ids.add(
                MessageRecord(conv, mid, ids.stanza, ids.origin or ids.attr, sender.remote_id),
                *([ids.attr] if ids.attr and ids.attr != ids.origin else []),
            )
            if portal.receiver:
                self.c.known_dms.add(portal)
            await self.c.media.fill(content.attachments)
            ok = await self.c.emit(
                RemoteMessage(
                    portal=portal,
                    sender=sender,
                    id=mid,
                    content=content,
                    reply_to=reply_to,
                    timestamp=stamp,
                )
            )
            if ok and not group and not sender.is_from_me and inc.receipt_request(msg) and ids.attr:
                frm = inc.stanza_jid(msg, "from")
                if frm is not None:
                    with contextlib.suppress(NotConnected):
                        stream.send(out.receipt(stream.xmpp, mfrom=to, mto=frm, target=ids.attr))
            return
        marker = inc.displayed_marker(msg)
        if marker is not None:
            await self.c.emit(
                RemoteReceipt(
                    portal=portal,
                    sender=sender,
                    target_id=await self.c.ids.canonical(conv, marker),
                    timestamp=stamp,
                )
            )
            return
        state = inc.chat_state(msg)
        if state is not None and (not portal.receiver or portal in self.c.known_dms):
            await self.c.emit(
                RemoteTyping(portal=portal, sender=sender, typing=state == "composing")
            )
