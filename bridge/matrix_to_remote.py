"""Matrix events -> connector calls. Where a Matrix message becomes a remote message.

Every event that cannot be bridged is answered with a notice in its room: nothing is
dropped silently."""

from __future__ import annotations

import asyncio
import html
import uuid
from typing import TYPE_CHECKING, Any

from . import content as contentmod
from . import encrypted_notice
from . import metrics as m
from .connector import (
    Attachment,
    ConnectorError,
    GhostKey,
    MatrixAccess,
    MatrixEdit,
    MatrixMembership,
    MatrixMessage,
    MatrixPowerLevel,
    MatrixProfile,
    MatrixReaction,
    MatrixReactionRemove,
    MatrixReceipt,
    MatrixRedaction,
    MatrixRoomMeta,
    MatrixSender,
    MatrixTyping,
    Membership,
    MessageContent,
    MessageKind,
    MessageRef,
    NetworkClient,
    NotSupported,
)
from .connector.capabilities import (
    AccessHandling,
    DirectMessaging,
    EditHandling,
    MembershipHandling,
    PowerLevelHandling,
    PresenceHandling,
    ProfileHandling,
    ReactionHandling,
    ReceiptHandling,
    RedactionHandling,
    RoomMetaHandling,
    TypingHandling,
)
from .connector.events import now_ms
from .crypto import DecryptionFailed, KeyMissing
from .crypto.early import early_notice, encrypted_before_join
from .db import MessageRow, Portal, ReactionRow
from .matrix.homeserver import MatrixError

if TYPE_CHECKING:
    from .bridge import Bridge

# How long an encrypted event whose room key has not arrived waits for it, aside from its
# room's queue, before its sender is told it cannot be decrypted.
LATE_KEY_S = 30.0


def _rel(content: dict[str, Any]) -> dict[str, Any]:
    rel = content.get("m.relates_to")
    return rel if isinstance(rel, dict) else {}


# What a failure notice calls an event of each type.
_WHAT = {
    "m.room.message": "message",
    "m.sticker": "sticker",
    "m.reaction": "reaction",
    "m.room.redaction": "deletion",
    "m.room.member": "membership change",
    "m.room.name": "room name change",
    "m.room.topic": "topic change",
    "m.room.avatar": "room avatar change",
    "m.room.power_levels": "power level change",
    "m.room.join_rules": "join rule change",
}


class MatrixHandler:
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.hs = bridge.hs
        self.log = bridge.log.getChild("matrix")
        self._typing: dict[str, set[str]] = {}
        # A profile change arrives once per room: download a new avatar once, not per portal.
        self._avatars: dict[str, bytes] = {}
        self._late_keys: set[asyncio.Task[None]] = set()
        self._waiting_ids: set[str] = set()  # events whose late key is being waited for
        self.encrypted_notices = encrypted_notice.EncryptedNotices()

    # --- entry points -----------------------------------------------------------------

    async def handle(self, evt: dict[str, Any]) -> None:
        etype, room_id, sender = evt.get("type"), evt.get("room_id"), evt.get("sender")
        if not (isinstance(etype, str) and isinstance(room_id, str) and isinstance(sender, str)):
            self.log.warning("ignoring a malformed event (type, room_id or sender missing)")
            return
        content = evt.get("content")
        if not isinstance(content, dict):
            content = {}
        if etype == "m.room.member" and isinstance(evt.get("state_key"), str):
            self.hs.note_membership(room_id, evt["state_key"], str(content.get("membership")))
        if self.bridge.crypto is not None and "state_key" in evt:
            await self.bridge.crypto.note_state(evt)
        if self.bridge.is_bridge_user(sender):
            return  # our own echo
        try:
            await self._dispatch(evt, etype, room_id, sender, content)
        except MatrixError as e:
            self.log.warning("homeserver error handling %s in %s: %s", etype, room_id, e)
            await self.tell_failure(
                evt, f"the homeserver refused a request ({e})", m.HOMESERVER_ERROR
            )
        except ConnectorError as e:
            # Raised before the delivery proper (no client, network gone...).
            self.log.info("%s in %s not bridged: %s", etype, room_id, e)
            await self.tell_failure(evt, str(e), m.REMOTE_ERROR)

    async def tell_failure(
        self, evt: dict[str, Any], reason: str, counted_as: str | None = None
    ) -> None:
        """Tell the sender of ``evt``, in its room, that it was not bridged and why.
        ``counted_as``: the metrics' reason, for a message of a portal (others are not counted)."""
        room_id, sender = evt.get("room_id"), evt.get("sender")
        if not (isinstance(room_id, str) and isinstance(sender, str)):
            self.log.warning("an event without room or sender was not bridged: %s", reason)
            return
        what = _WHAT.get(str(evt.get("type")), "event")
        if what == "message" and _rel(evt.get("content") or {}).get("rel_type") == "m.replace":
            what = "edit"
        if counted_as is not None and what in ("message", "sticker"):
            self._count_failed(room_id, counted_as)
        who = self.bridge.display_name_of(sender)
        reason = reason.rstrip(". ")
        await self.bridge.send_notice(room_id, f"{who}: your {what} was not delivered: {reason}.")

    async def _dispatch(
        self,
        evt: dict[str, Any],
        etype: str,
        room_id: str,
        sender: str,
        content: dict[str, Any],
        decrypted: bool = False,
    ) -> None:
        if self.bridge.double_puppets.is_echo(content):
            return  # sent by the bridge as this user, from their other client
        if "state_key" in evt:
            if etype == "m.room.member":
                await self.membership(evt, room_id, sender, content)
            elif etype in ("m.room.name", "m.room.topic", "m.room.avatar"):
                await self.room_meta(evt, etype, room_id, sender, content)
            elif etype == "m.room.power_levels":
                await self.power_levels(evt, room_id, sender, content)
            elif etype == "m.room.join_rules":
                await self.join_rules(evt, room_id, sender, content)
            return
        if etype in ("m.room.message", "m.sticker"):
            if etype == "m.room.message" and await self.bridge.commands.maybe_handle(
                room_id, sender, content
            ):
                return
            edit = _rel(content).get("rel_type") == "m.replace"
            portal = await self._bridged_portal(
                room_id, sender, count=not edit, plain=not decrypted
            )
            if portal is None:
                return
            if etype == "m.sticker":
                content = {**content, "msgtype": "m.image"}
            if edit:
                await self.edit(evt, portal, sender, content)
            else:
                await self.message(evt, portal, sender, content)
        elif etype == "m.reaction":
            portal = await self._bridged_portal(room_id, sender, plain=not decrypted)
            if portal:
                await self.reaction(evt, portal, sender, content)
        elif etype == "m.room.redaction":
            portal = await self._bridged_portal(room_id, sender)
            if portal:
                await self.redaction(evt, portal, sender, content)
        elif etype == "m.room.encrypted" and self.bridge.crypto is not None:
            await self.decrypted(evt, room_id, sender)
        elif etype == "m.room.encrypted":
            await self.encrypted(room_id)

    async def encrypted(self, room_id: str) -> None:
        """An event this bridge cannot decrypt: the room is told what to do instead, at its
        first such event and then at most once per interval (see encrypted_notice)."""
        missed = self.encrypted_notices.due(room_id)
        if missed is None:
            return
        bot = self.bridge.cfg.bot_mxid
        portal = await self.bridge.portal_store.by_room(room_id)
        if portal is None:
            text = encrypted_notice.for_bot_room(bot, self.bridge.cfg.command_prefix, missed)
        elif portal.is_direct:
            key = portal.key
            ghost = self.bridge.ghost_user_id(key.network, key.remote_id)
            row = await self.bridge.ghosts.get(key.network, key.remote_id)
            name = row.display_name if row and row.display_name else key.remote_id
            text = encrypted_notice.for_dm(name, ghost, missed)
        else:
            connector = self.bridge.connector_of(portal.key.network)
            alias = None if portal.plumbed else self.bridge.alias_of(portal.key)
            text = encrypted_notice.for_portal(connector.display_name, alias, missed)
        # Portals without the bot (DMs opened by inviting a ghost) hear it from their ghost.
        sender = portal.metadata.get("notice_sender") if portal else None
        try:
            await self.hs.send(
                room_id,
                "m.room.message",
                {"msgtype": "m.notice", "body": text},
                txn_id=f"mimi.encrypted.{uuid.uuid4().hex}",
                as_user=sender if isinstance(sender, str) else None,
            )
        except MatrixError as e:
            self.log.warning("could not tell %s about encrypted messages: %s", room_id, e)
            if e.errcode != "M_FORBIDDEN":  # not for lack of a member that may speak: retry
                self.encrypted_notices.forget(room_id)

    async def _bridged_portal(
        self, room_id: str, sender: str, count: bool = False, plain: bool = False
    ) -> Portal | None:
        """The room's portal, unless the bridge refuses to bridge it (bridge.encryption.require
        and the room, or with ``plain`` the event, is not encrypted: the sender is told;
        ``count``: as a failed message)."""
        portal = await self.bridge.portal_store.by_room(room_id)
        crypto = self.bridge.crypto
        if portal is None or crypto is None or not self.bridge.cfg.encryption.require:
            return portal
        if await crypto.is_encrypted(room_id):
            if not plain:
                return portal
            # A client (or bot) that does not encrypt, in an encrypted room.
            self._failed(portal, "message" if count else "event", m.NOT_ALLOWED)
            await self.bridge.send_notice(
                room_id,
                f"{sender}: this bridge bridges only encrypted messages, and yours was sent"
                " unencrypted, so it was not bridged. Send it from a client that encrypts.",
            )
            return None
        self._failed(portal, "message" if count else "event", m.NOT_ALLOWED)
        await self.bridge.send_notice(
            room_id,
            f"{sender}: this bridge bridges only encrypted rooms, so nothing sent here is "
            "bridged. Turn on encryption in the room's settings.",
        )
        return None

    # --- encrypted events -------------------------------------------------------------

    async def decrypted(self, evt: dict[str, Any], room_id: str, sender: str) -> None:
        """Decrypt with the bot's device and handle the plain event; a late room key is
        waited for aside, so the room's next events are not held up."""
        crypto = self.bridge.crypto
        assert crypto is not None
        try:
            plain = await crypto.decrypt(evt)
        except KeyMissing as e:
            # Kept until handled: a restart while it waits handles it again.
            await crypto.keep_waiting(evt)
            self._waiting_ids.add(str(evt.get("event_id", "")))
            task = asyncio.create_task(self._late_key(evt, room_id, sender, e))
            self._late_keys.add(task)
            task.add_done_callback(self._late_keys.discard)
            return
        except DecryptionFailed as e:
            await self.undecryptable(room_id, sender, e)
            return
        await self._dispatch_plain(plain, room_id, sender)

    async def _dispatch_plain(self, plain: dict[str, Any], room_id: str, sender: str) -> None:
        etype, content = plain.get("type"), plain.get("content")
        if etype == "m.room.encrypted" or not isinstance(etype, str):
            return  # nested encryption is not a thing clients send
        await self._dispatch(plain, etype, room_id, sender, content or {}, decrypted=True)

    async def _late_key(
        self, evt: dict[str, Any], room_id: str, sender: str, missing: KeyMissing
    ) -> None:
        crypto = self.bridge.crypto
        assert crypto is not None
        got = await crypto.wait_for_key(missing, LATE_KEY_S)

        async def run() -> None:
            try:
                if not got:
                    await self.undecryptable(room_id, sender, missing)
                    return
                try:
                    plain = await crypto.decrypt(evt)
                except DecryptionFailed as e:
                    await self.undecryptable(room_id, sender, e)
                    return
                await self._dispatch_plain(plain, room_id, sender)
            except MatrixError as e:
                self.log.warning("homeserver error handling a late event in %s: %s", room_id, e)
            finally:
                self._waiting_ids.discard(str(evt.get("event_id", "")))
                await crypto.done_waiting(str(evt.get("event_id", "")))

        self.bridge.queues.submit(("matrix", room_id), run)

    async def resume_waiting(self) -> None:
        """At start: the encrypted events that were waiting for their keys at the last stop."""
        crypto = self.bridge.crypto
        if crypto is None:
            return
        for evt in await crypto.waiting():
            room_id = evt.get("room_id")
            if isinstance(room_id, str):
                self.bridge.queues.submit(("matrix", room_id), self._resumed(evt))

    def _resumed(self, evt: dict[str, Any]) -> Any:
        event_id = str(evt.get("event_id", ""))

        async def run() -> None:
            crypto = self.bridge.crypto
            assert crypto is not None
            if event_id in self._waiting_ids:
                return  # this run kept it (it came in again): its own wait goes on
            # Left in the transactions' events too (a crash before they were done with), it
            # was handled just before in this queue.
            if event_id not in self.bridge.replayed_events:
                await self.handle(evt)
            if event_id not in self._waiting_ids:  # handled, not waiting again
                await crypto.done_waiting(event_id)

        return run

    def stop_waiting(self) -> None:
        """At stop: events still waiting for their keys stay recorded for the next start."""
        for task in self._late_keys:
            task.cancel()

    async def undecryptable(self, room_id: str, sender: str, why: DecryptionFailed) -> None:
        """An event that stays encrypted is never dropped silently: its sender is told."""
        self.log.info("cannot decrypt an event of %s in %s: %s", sender, room_id, why.reason)
        self._count_failed(room_id, m.UNDECRYPTABLE)
        await self.bridge.send_notice(
            room_id,
            f"{sender}: the bridge could not decrypt your message, so it was not bridged: "
            f"{why.reason}. {why.advice[:1].upper()}{why.advice[1:]}.",
        )

    # --- who speaks -------------------------------------------------------------------

    async def speaker(
        self, portal: Portal, user_id: str, what: str
    ) -> tuple[NetworkClient, MatrixSender] | None:
        """The client that speaks for ``user_id`` here, or None after telling them why."""
        assert portal.room_id
        perm = self.bridge.permission_of(user_id)
        connector = self.bridge.connector_of(portal.key.network)
        if perm is None:
            await self.bridge.send_notice(
                portal.room_id, f"{user_id}: you may not use this bridge; your {what} was not sent."
            )
            return None
        user = await self.bridge.matrix_user(user_id)
        client = None
        if perm in ("user", "admin"):
            client = await connector.client_for(user, portal.key)
        if client is not None:
            return client, MatrixSender(user_id, user.display_name)
        if portal.relay and self.bridge.cfg.relay.enabled:
            relay = await connector.relay_client(portal.key)
            if relay is not None:
                return relay, MatrixSender(user_id, user.display_name, relayed=True)
        hint = (
            f"log in with `login {connector.name} ...` in your management room"
            if perm in ("user", "admin")
            else "this room has no relay"
        )
        await self.bridge.send_notice(
            portal.room_id, f"{user.display_name}: your {what} was not sent: {hint}."
        )
        return None

    async def _deliver(self, portal: Portal, user_id: str, what: str, coro: Any) -> Any:
        assert portal.room_id
        try:
            return await coro
        except NotSupported as e:
            self._failed(portal, what, m.UNSUPPORTED)
            await self.bridge.send_notice(portal.room_id, f"Your {what} was not bridged: {e}")
        except ConnectorError as e:
            self._failed(portal, what, m.REMOTE_ERROR)
            await self.bridge.send_notice(portal.room_id, f"Your {what} was not delivered: {e}")
        except Exception:
            self._failed(portal, what, m.INTERNAL_ERROR)
            self.log.exception("delivering a %s from %s failed", what, user_id)
            await self.bridge.send_notice(
                portal.room_id, f"Your {what} was not delivered because of an internal error."
            )
        return None

    def _failed(self, portal: Portal, what: str, reason: str) -> None:
        if what == "message":  # the metrics count messages; other actions are told alike
            self.bridge.metrics.failed(portal.key.network, m.MATRIX_TO_REMOTE, reason)

    def _count_failed(self, room_id: str, reason: str) -> None:
        """Count a message that failed before it reached its portal's delivery (only rooms
        whose portal is known: commands and other rooms are no bridged messages)."""
        network = self.bridge.portal_store.known_network(room_id)
        if network is not None:
            self.bridge.metrics.failed(network, m.MATRIX_TO_REMOTE, reason)

    async def _not_supported(self, portal: Portal, what: str) -> None:
        assert portal.room_id
        name = self.bridge.connector_of(portal.key.network).display_name
        await self.bridge.send_notice(portal.room_id, f"{name} cannot carry {what}; not bridged.")

    def relay_format(self, sender: MatrixSender, msg: MessageContent) -> MessageContent:
        relay = self.bridge.cfg.relay
        fmt = relay.emote_format if msg.kind == MessageKind.EMOTE else relay.message_format
        text = fmt.format(displayname=sender.display_name, user_id=sender.user_id, message=msg.text)
        html_body = None
        if msg.html:
            # The format's own text is text too: "<{displayname}>" must not read as a tag.
            html_body = html.escape(fmt, quote=False).format(
                displayname=html.escape(sender.display_name),
                user_id=html.escape(sender.user_id),
                message=msg.html,
            )
        kind = MessageKind.TEXT if msg.kind == MessageKind.EMOTE else msg.kind
        return MessageContent(text, html_body, kind, msg.attachments, msg.mentions)

    async def ref(self, event_id: str | None) -> tuple[MessageRow, MessageRef] | None:
        if not isinstance(event_id, str):
            return None
        row = await self.bridge.messages.by_event(event_id)
        if row is None:
            return None
        from_matrix = row.sender_id == row.sender_mxid and not self.bridge.is_bridge_user(
            row.sender_mxid
        )
        return row, MessageRef(
            remote_id=row.remote_id,
            sender_remote_id=None if from_matrix else row.sender_id,
            text=row.body,
            timestamp=row.timestamp,
            sender_matrix_user=row.sender_mxid if from_matrix else None,
        )

    # --- messages ---------------------------------------------------------------------

    async def message(
        self, evt: dict[str, Any], portal: Portal, sender: str, content: dict[str, Any]
    ) -> None:
        assert portal.room_id
        event_id = str(evt.get("event_id", ""))
        if event_id in self.bridge.replayed_events and await self.bridge.messages.by_event(
            event_id
        ):
            return  # processed before a restart
        file = content.get("file")
        encrypted_file = self.bridge.crypto is not None and isinstance(file, dict)
        if encrypted_file and isinstance(file, dict) and "url" not in content:
            content = {**content, "url": file.get("url")}  # an encrypted room's attachment
        try:
            msg, mxc = contentmod.from_matrix(content)
        except contentmod.UnsupportedContent as e:
            self._failed(portal, "message", m.UNSUPPORTED)
            await self.bridge.send_notice(portal.room_id, f"Your message was not bridged: {e}.")
            return
        if mxc:
            att = msg.attachments[0]
            try:
                att.data = await self.hs.download(mxc)
                if encrypted_file and isinstance(file, dict) and self.bridge.crypto is not None:
                    att.data = await self.bridge.crypto.decrypt_file(att.data, file)
                    # Remote users open files by link, and the link serves the media repo's
                    # copy: a copy in clear (the network gets the file in clear anyway).
                    mxc = att.mxc = await self.hs.upload(att.data, att.mimetype, att.filename)
                att.url = self.bridge.mxc_to_url(mxc, att.filename)
            except MatrixError as e:
                self._failed(portal, "message", m.MEDIA_FAILED)
                await self.bridge.send_notice(
                    portal.room_id, f"Your file was not bridged: it could not be downloaded ({e})."
                )
                return
            except DecryptionFailed as e:
                self._failed(portal, "message", m.MEDIA_FAILED)
                await self.bridge.send_notice(
                    portal.room_id, f"Your file was not bridged: {e.reason}. {e.advice}."
                )
                return
        speaker = await self.speaker(portal, sender, "message")
        if speaker is None:
            self._failed(portal, "message", m.NOT_ALLOWED)
            return
        client, msender = speaker
        if msender.relayed:
            msg = self.relay_format(msender, msg)
        rel = _rel(content)
        reply = await self.ref((rel.get("m.in_reply_to") or {}).get("event_id"))
        thread = None
        if rel.get("rel_type") == "m.thread":
            thread = await self.ref(rel.get("event_id"))
        mm = MatrixMessage(
            portal=portal.key,
            sender=msender,
            event_id=event_id,
            timestamp=int(evt.get("origin_server_ts") or now_ms()),
            content=msg,
            reply_to=reply[1] if reply else None,
            thread_root=thread[1] if thread else None,
        )
        sent = await self._deliver(portal, sender, "message", client.handle_matrix_message(mm))
        if sent is None:
            return
        self.bridge.metrics.bridged_from_matrix(portal.key.network, event_id)
        # Stored before the event counts as handled: after a crash from here on, the replayed
        # transaction finds it bridged and does not send it again.
        await self.bridge.messages.insert(
            MessageRow(
                portal=portal.key,
                remote_id=sent.remote_id,
                part=0,
                room_id=portal.room_id,
                event_id=event_id,
                sender_id=sender,
                sender_mxid=sender,
                timestamp=sent.timestamp or mm.timestamp,
                reply_to=reply[0].event_id if reply else None,
                thread_root=thread[0].event_id if thread else None,
                body=msg.text,
            )
        )

    async def edit(
        self, evt: dict[str, Any], portal: Portal, sender: str, content: dict[str, Any]
    ) -> None:
        assert portal.room_id
        target = await self.ref(_rel(content).get("event_id"))
        if target is None:
            return  # an edit of something never bridged
        new = content.get("m.new_content")
        if not isinstance(new, dict):
            await self.bridge.send_notice(portal.room_id, "Your edit was not bridged: no new text.")
            return
        try:
            msg, _ = contentmod.from_matrix(new)
        except contentmod.UnsupportedContent as e:
            await self.bridge.send_notice(portal.room_id, f"Your edit was not bridged: {e}.")
            return
        speaker = await self.speaker(portal, sender, "edit")
        if speaker is None:
            return
        client, msender = speaker
        if not isinstance(client, EditHandling):
            await self._not_supported(portal, "edits")
            return
        if msender.relayed:
            msg = self.relay_format(msender, msg)
        me = MatrixEdit(
            portal=portal.key,
            sender=msender,
            event_id=str(evt.get("event_id", "")),
            target=target[1],
            content=msg,
            original_text=target[0].body,
        )
        done = await self._deliver(portal, sender, "edit", self._edit(client, me))
        if done:
            await self.bridge.messages.record_edit(target[0], msg.text)

    @staticmethod
    async def _edit(client: EditHandling, me: MatrixEdit) -> bool:
        await client.handle_matrix_edit(me)
        return True

    async def reaction(
        self, evt: dict[str, Any], portal: Portal, sender: str, content: dict[str, Any]
    ) -> None:
        assert portal.room_id
        rel = _rel(content)
        key = rel.get("key")
        target = await self.ref(rel.get("event_id"))
        if target is None or not isinstance(key, str) or rel.get("rel_type") != "m.annotation":
            return
        speaker = await self.speaker(portal, sender, "reaction")
        if speaker is None:
            return
        client, msender = speaker
        if not isinstance(client, ReactionHandling):
            await self._not_supported(portal, "reactions")
            return
        event_id = str(evt.get("event_id", ""))
        mr = MatrixReaction(
            portal=portal.key, sender=msender, event_id=event_id, target=target[1], key=key
        )
        sent = await self._deliver(portal, sender, "reaction", client.handle_matrix_reaction(mr))
        if sent is None:
            return
        await self.bridge.messages.insert_reaction(
            ReactionRow(
                portal.key,
                target[0].remote_id,
                sender,
                key,
                portal.room_id,
                event_id,
                sent.remote_id,
            )
        )

    async def redaction(
        self, evt: dict[str, Any], portal: Portal, sender: str, content: dict[str, Any]
    ) -> None:
        redacts = evt.get("redacts") or content.get("redacts")
        if not isinstance(redacts, str):
            return
        reason = content.get("reason") if isinstance(content.get("reason"), str) else None
        event_id = str(evt.get("event_id", ""))
        reaction = await self.bridge.messages.reaction_by_event(redacts)
        if reaction is not None:
            speaker = await self.speaker(portal, sender, "reaction removal")
            if speaker is None:
                return
            client, msender = speaker
            if not isinstance(client, ReactionHandling):
                await self._not_supported(portal, "reaction removals")
                return
            rows = await self.bridge.messages.by_remote(portal.key, reaction.target_id)
            ref = MessageRef(reaction.target_id, rows[0].sender_id if rows else None)
            rm = MatrixReactionRemove(
                portal=portal.key,
                sender=msender,
                event_id=event_id,
                target=ref,
                key=reaction.key,
                reaction_remote_id=reaction.remote_id or "",
            )
            await self._deliver(
                portal, sender, "reaction removal", client.handle_matrix_reaction_remove(rm)
            )
            await self.bridge.messages.delete_reaction(redacts)
            return
        target = await self.ref(redacts)
        if target is None:
            return
        speaker = await self.speaker(portal, sender, "deletion")
        if speaker is None:
            return
        client, msender = speaker
        if not isinstance(client, RedactionHandling):
            await self._not_supported(portal, "deletions")
            return
        mr = MatrixRedaction(
            portal=portal.key, sender=msender, event_id=event_id, target=target[1], reason=reason
        )
        await self._deliver(portal, sender, "deletion", client.handle_matrix_redaction(mr))
        await self.bridge.messages.delete(target[0])

    # --- state ------------------------------------------------------------------------

    async def room_meta(
        self, evt: dict[str, Any], etype: str, room_id: str, sender: str, content: dict[str, Any]
    ) -> None:
        portal = await self.bridge.portal_store.by_room(room_id)
        if portal is None:
            return
        prev = (evt.get("unsigned") or {}).get("prev_content") or {}
        field = {"m.room.name": "name", "m.room.topic": "topic", "m.room.avatar": "url"}[etype]
        if prev.get(field) == content.get(field):
            return
        speaker = await self.speaker(portal, sender, "room change")
        if speaker is None:
            return
        client, msender = speaker
        if not isinstance(client, RoomMetaHandling):
            await self._not_supported(portal, f"room {'avatar' if field == 'url' else field}s")
            return
        change = MatrixRoomMeta(portal=portal.key, sender=msender, event_id=str(evt["event_id"]))
        if field == "name":
            change.name = str(content.get("name") or "")
        elif field == "topic":
            change.topic = str(content.get("topic") or "")
        else:
            url = content.get("url")
            if not isinstance(url, str) or not url.startswith("mxc://"):
                return await self._not_supported(portal, "removing a room avatar")
            info = content.get("info") if isinstance(content.get("info"), dict) else {}
            assert isinstance(info, dict)
            try:
                data = await self.hs.download(url)
            except MatrixError as e:
                await self.bridge.send_notice(
                    portal.room_id or room_id, f"The room avatar was not bridged: {e}"
                )
                return
            change.avatar = Attachment(
                filename=contentmod.avatar_name(str(info.get("mimetype") or "image/png")),
                mimetype=str(info.get("mimetype") or "image/png"),
                data=data,
                size=len(data),
                mxc=url,
            )
        await self._deliver(portal, sender, "room change", client.handle_matrix_room_meta(change))

    async def join_rules(
        self, evt: dict[str, Any], room_id: str, sender: str, content: dict[str, Any]
    ) -> None:
        """Invite-only or not: what a network can say of who may join."""
        portal = await self.bridge.portal_store.by_room(room_id)
        if portal is None or portal.is_direct:
            return
        prev = (evt.get("unsigned") or {}).get("prev_content") or {}
        invite_only = content.get("join_rule") in ("invite", "knock")
        if "join_rule" in prev and (prev.get("join_rule") in ("invite", "knock")) == invite_only:
            return  # e.g. public to restricted: nothing a network tells apart
        speaker = await self.speaker(portal, sender, "join rule change")
        if speaker is None:
            return
        client, msender = speaker
        if not isinstance(client, AccessHandling):
            await self._not_supported(portal, "join rules")
            return
        change = MatrixAccess(
            portal=portal.key,
            sender=msender,
            event_id=str(evt["event_id"]),
            invite_only=invite_only,
        )
        await self._deliver(portal, sender, "join rule change", client.handle_matrix_access(change))

    async def power_levels(
        self, evt: dict[str, Any], room_id: str, sender: str, content: dict[str, Any]
    ) -> None:
        """Changed levels of portal members, one connector call each. Levels the bridge set
        itself (a remote rank mirrored) arrive from the bot and never get here."""
        portal = await self.bridge.portal_store.by_room(room_id)
        if portal is None:
            return
        await self.bridge.encryption_required.levels_changed(portal, content)
        prev = (evt.get("unsigned") or {}).get("prev_content")
        if not isinstance(prev, dict):
            return  # the room's first levels: nothing changed
        changes = []
        for user_id, (before, after) in level_changes(prev, content).items():
            ghost = self.bridge.parse_ghost(user_id)
            if ghost is not None and ghost.network != portal.key.network:
                continue
            if ghost is None and self.bridge.is_bridge_user(user_id):
                continue  # the bot, or another network's ghost
            changes.append((user_id, ghost, before, after))
        if not changes:
            return
        speaker = await self.speaker(portal, sender, "power level change")
        if speaker is None:
            return
        client, msender = speaker
        if msender.relayed or not isinstance(client, PowerLevelHandling):
            what = "power levels set through the relay" if msender.relayed else "power levels"
            await self._not_supported(portal, what)
            return
        for user_id, ghost, before, after in changes:
            change = MatrixPowerLevel(
                portal=portal.key,
                sender=msender,
                event_id=str(evt.get("event_id", "")),
                level=after,
                previous=before,
                target=GhostKey(ghost.network, ghost.remote_id) if ghost else None,
                target_matrix_user=None if ghost else user_id,
            )
            await self._deliver(
                portal, sender, "power level change", client.handle_matrix_power_level(change)
            )

    async def membership(
        self, evt: dict[str, Any], room_id: str, sender: str, content: dict[str, Any]
    ) -> None:
        target = str(evt["state_key"])
        membership = content.get("membership")
        prev = (evt.get("unsigned") or {}).get("prev_content") or {}
        if membership == "join" and target == sender:
            self.bridge.remember_display_name(sender, content.get("displayname"))
        if target == self.bridge.cfg.bot_mxid:
            if membership == "invite":
                await self.bot_invited(room_id, sender, content)
            return
        ghost = self.bridge.parse_ghost(target)
        portal = await self.bridge.portal_store.by_room(room_id)
        if ghost is not None and membership == "invite" and portal is None:
            await self.ghost_invited(room_id, sender, ghost, content)
            return
        if portal is None or portal.room_id is None:
            return
        if membership == "join" and prev.get("membership") == "join":
            if target == sender and ghost is None:
                await self.profile(evt, portal, sender, content, prev)
            return  # a profile change, not a join
        reason = content.get("reason") if isinstance(content.get("reason"), str) else None
        change: Membership | None = None
        if target == sender:
            change = {"join": Membership.JOIN, "leave": Membership.LEAVE}.get(str(membership))
        elif membership == "leave":
            change = Membership.UNBAN if prev.get("membership") == "ban" else Membership.KICK
        elif membership == "ban":
            change = Membership.BAN
        elif membership == "invite":
            change = Membership.INVITE
        if change is None:
            return
        connector = self.bridge.connector_of(portal.key.network)
        if change in (Membership.JOIN, Membership.LEAVE):
            perm = self.bridge.permission_of(sender)
            if perm not in ("user", "admin"):
                return  # relayed users have no remote presence to update
            user = await self.bridge.matrix_user(sender)
            client = await connector.client_for(user, portal.key)
            if isinstance(client, MembershipHandling):
                mm = MatrixMembership(
                    portal=portal.key,
                    sender=MatrixSender(sender, user.display_name),
                    event_id=str(evt.get("event_id", "")),
                    membership=change,
                )
                await self._deliver(
                    portal, sender, "join/leave", client.handle_matrix_membership(mm)
                )
            return
        speaker = await self.speaker(portal, sender, change.value)
        if speaker is None:
            return
        client, msender = speaker
        if not isinstance(client, MembershipHandling):
            await self._not_supported(portal, f"{change.value}s")
            return
        mm = MatrixMembership(
            portal=portal.key,
            sender=msender,
            event_id=str(evt.get("event_id", "")),
            membership=change,
            target=GhostKey(ghost.network, ghost.remote_id) if ghost else None,
            target_matrix_user=None if ghost else target,
            reason=reason,
        )
        await self._deliver(portal, sender, change.value, client.handle_matrix_membership(mm))

    async def profile(
        self,
        evt: dict[str, Any],
        portal: Portal,
        sender: str,
        content: dict[str, Any],
        prev: dict[str, Any],
    ) -> None:
        """A puppeted user's new display name or avatar, seen in one portal's member event."""
        name, old_name = content.get("displayname"), prev.get("displayname")
        avatar, old_avatar = content.get("avatar_url"), prev.get("avatar_url")
        name_changed = isinstance(name, str) and bool(name) and name != old_name
        avatar_changed = avatar != old_avatar
        if not (name_changed or avatar_changed):
            return
        if self.bridge.permission_of(sender) not in ("user", "admin"):
            return  # relayed users have no remote profile; the relay prefix follows the name
        user = await self.bridge.matrix_user(sender)
        connector = self.bridge.connector_of(portal.key.network)
        client = await connector.client_for(user, portal.key)
        if not isinstance(client, ProfileHandling):
            return  # the network shows no profile; nothing the user sent is lost
        change = MatrixProfile(
            portal=portal.key,
            sender=MatrixSender(sender, user.display_name),
            event_id=str(evt.get("event_id", "")),
            display_name=name if name_changed else None,
            previous_display_name=old_name if isinstance(old_name, str) else None,
            avatar_removed=avatar_changed and not avatar,
        )
        if avatar_changed and isinstance(avatar, str) and avatar.startswith("mxc://"):
            try:
                data = self._avatars.get(avatar) or await self.hs.download(avatar, 10 * 1024 * 1024)
            except MatrixError as e:
                self.log.warning("avatar %s of %s not downloaded: %s", avatar, sender, e)
            else:
                if len(self._avatars) >= 8:
                    self._avatars.pop(next(iter(self._avatars)))
                self._avatars[avatar] = data
                mimetype = contentmod.sniff_image(data)
                change.avatar = Attachment(
                    "avatar", mimetype, data=data, size=len(data), mxc=avatar
                )
        if change.display_name is None and change.avatar is None and not change.avatar_removed:
            return
        await self._deliver(portal, sender, "profile change", client.handle_matrix_profile(change))

    async def bot_invited(self, room_id: str, sender: str, content: dict[str, Any]) -> None:
        if self.bridge.permission_of(sender) is None:
            self.log.info("refusing an invite from %s (no permission)", sender)
            await self.hs.leave(room_id, reason="You may not use this bridge.")
            return
        await self.hs.join(room_id)
        crypto = self.bridge.crypto
        encrypted = crypto is not None and await crypto.is_encrypted(room_id)
        early = await self._sent_before_join(room_id) if encrypted else []
        # Only a direct chat becomes the management room; other rooms may be linked later.
        if content.get("is_direct"):
            await self.bridge.users.set_management_room(sender, room_id)
            welcome = self.bridge.commands.welcome()
            if await self._cannot_read(room_id):
                welcome += encrypted_notice.welcome_warning(self.bridge.cfg.bot_mxid)
            await self.bridge.send_notice(room_id, welcome)
        await self.early_messages(room_id, early)

    async def _cannot_read(self, room_id: str, as_user: str | None = None) -> bool:
        """Whether the room is encrypted and this bridge has no encryption to read it."""
        if self.bridge.crypto is not None:
            return False
        try:
            return bool(await self.hs.get_state(room_id, "m.room.encryption", as_user=as_user))
        except MatrixError as e:
            self.log.info("encryption state of %s not read: %s", room_id, e)
            return False

    async def ghost_invited(
        self, room_id: str, sender: str, ghost: GhostKey, content: dict[str, Any]
    ) -> None:
        connector = self.bridge.connector_of(ghost.network)
        ghost_id = await self.bridge.portal_mgr.ghost(ghost.network, ghost.remote_id)
        perm = self.bridge.permission_of(sender)
        if not isinstance(connector, DirectMessaging) or perm not in ("user", "admin"):
            await self.hs.join(room_id, ghost_id)
            why = (
                f"{connector.display_name} direct messages are not supported"
                if not isinstance(connector, DirectMessaging)
                else "you may not start direct messages through this bridge"
            )
            await self.hs.send(
                room_id,
                "m.room.message",
                {"msgtype": "m.notice", "body": why},
                txn_id=f"mimi.dm-refused.{room_id}",
                as_user=ghost_id,
            )
            await self.hs.leave(room_id, ghost_id)
            return
        user = await self.bridge.matrix_user(sender)
        try:
            key = await connector.open_dm(user, ghost.network, ghost.remote_id)
        except ConnectorError as e:
            await self.hs.join(room_id, ghost_id)
            await self.hs.send(
                room_id,
                "m.room.message",
                {"msgtype": "m.notice", "body": f"Cannot open this chat: {e}"},
                txn_id=f"mimi.dm-failed.{room_id}",
                as_user=ghost_id,
            )
            await self.hs.leave(room_id, ghost_id)
            return
        await self.hs.join(room_id, ghost_id)
        crypto = self.bridge.crypto
        if crypto is not None and await crypto.is_encrypted(room_id, ghost_id):
            # Only the bot has a device: clients share their room keys with it only if it is
            # a member. The ghost brings it in.
            await self.hs.invite(room_id, self.bridge.cfg.bot_mxid, as_user=ghost_id)
            await self.hs.join(room_id)
            early = await self._sent_before_join(room_id)
        else:
            early = []
        existing = await self.bridge.portal_store.get(key)
        portal = existing or Portal(key=key)
        portal.room_id = room_id
        portal.is_direct = True
        # The bot is not in this room: the bridge's notices here come from the ghost.
        portal.metadata["notice_sender"] = ghost_id
        await self.bridge.portal_store.save(portal)
        await connector.portal_opened(key)
        # The bot is not in this room, so no bridge-info state: the ghost says it instead.
        body = (
            f"This chat is bridged to {connector.display_name} "
            "by mimi-bridge: messages are decrypted at the bridge."
        )
        if await self._cannot_read(room_id, ghost_id):
            body += encrypted_notice.dm_warning(ghost_id)
        await self.hs.send(
            room_id,
            "m.room.message",
            {"msgtype": "m.notice", "body": body},
            txn_id=f"mimi.dm-opened.{room_id}",
            as_user=ghost_id,
        )
        await self.early_messages(room_id, early)
        if existing is None or existing.room_id is None:
            await self.bridge.portal_mgr.backfill(key, connector)

    async def _sent_before_join(self, room_id: str) -> list[dict[str, Any]]:
        try:
            return await encrypted_before_join(self.hs, room_id, self.bridge.is_bridge_user)
        except MatrixError as e:
            self.log.warning("history of %s before the bot joined not read: %s", room_id, e)
            return []

    async def early_messages(self, room_id: str, events: list[dict[str, Any]]) -> None:
        """Encrypted messages sent before the bot joined (see crypto.early): bridged if they
        can be decrypted after all, else their senders are told."""
        crypto = self.bridge.crypto
        lost: dict[str, int] = {}
        for evt in events:
            sender = str(evt.get("sender"))
            if crypto is None or await self.bridge.messages.by_event(str(evt.get("event_id"))):
                continue
            try:
                plain = await crypto.decrypt(evt)
            except DecryptionFailed:
                lost[sender] = lost.get(sender, 0) + 1
                continue
            await self._dispatch_plain(plain, room_id, sender)
        for sender, n in lost.items():
            await self.bridge.send_notice(room_id, early_notice(sender, n))

    # --- ephemeral --------------------------------------------------------------------

    async def handle_ephemeral(self, evt: dict[str, Any]) -> None:
        etype = evt.get("type")
        content = evt.get("content") if isinstance(evt.get("content"), dict) else {}
        assert isinstance(content, dict)
        try:
            if etype == "m.typing":
                await self.typing(str(evt.get("room_id")), content)
            elif etype == "m.receipt":
                await self.receipts(str(evt.get("room_id")), content)
            elif etype == "m.presence":
                await self.presence(str(evt.get("sender", "")), content)
        except ConnectorError as e:
            self.log.info("ephemeral %s not bridged: %s", etype, e)
        except Exception:
            self.log.exception("ephemeral %s failed", etype)

    async def _quiet_client(self, portal: Portal, user_id: str) -> NetworkClient | None:
        """The user's own client, without notices: typing and receipts are best-effort and
        never relayed (the MIMI requirements let them 'safely fail')."""
        if self.bridge.permission_of(user_id) not in ("user", "admin"):
            return None
        user = await self.bridge.matrix_user(user_id)
        return await self.bridge.connector_of(portal.key.network).client_for(user, portal.key)

    async def typing(self, room_id: str, content: dict[str, Any]) -> None:
        portal = await self.bridge.portal_store.by_room(room_id)
        if portal is None:
            return
        now = {u for u in content.get("user_ids") or [] if isinstance(u, str)}
        now = {u for u in now if not self.bridge.is_bridge_user(u)}
        before = self._typing.get(room_id, set())
        self._typing[room_id] = now
        for user_id in now ^ before:
            if self.bridge.double_puppets.typing_echo(room_id, user_id, user_id in now):
                continue
            client = await self._quiet_client(portal, user_id)
            if isinstance(client, TypingHandling):
                user = await self.bridge.matrix_user(user_id)
                await client.handle_matrix_typing(
                    MatrixTyping(
                        portal=portal.key,
                        sender=MatrixSender(user_id, user.display_name),
                        event_id="",
                        typing=user_id in now,
                    )
                )

    async def receipts(self, room_id: str, content: dict[str, Any]) -> None:
        portal = await self.bridge.portal_store.by_room(room_id)
        if portal is None:
            return
        for event_id, kinds in content.items():
            if not isinstance(kinds, dict):
                continue
            readers = kinds.get("m.read") or {}
            ref = await self.ref(event_id)
            if ref is None or not isinstance(readers, dict):
                continue
            for user_id in readers:
                if self.bridge.is_bridge_user(user_id):
                    continue
                if self.bridge.double_puppets.receipt_echo(room_id, user_id, event_id):
                    continue
                client = await self._quiet_client(portal, user_id)
                if isinstance(client, ReceiptHandling):
                    user = await self.bridge.matrix_user(user_id)
                    await client.handle_matrix_receipt(
                        MatrixReceipt(
                            portal=portal.key,
                            sender=MatrixSender(user_id, user.display_name),
                            event_id=event_id,
                            target=ref[1],
                        )
                    )

    async def presence(self, user_id: str, content: dict[str, Any]) -> None:
        if not user_id or self.bridge.is_bridge_user(user_id):
            return
        presence = content.get("presence")
        if not isinstance(presence, str):
            return
        status = content.get("status_msg") if isinstance(content.get("status_msg"), str) else None
        # Client -> itself: held until the loop ends, so no id is reused by a later client.
        seen: dict[int, NetworkClient] = {}
        for portal in await self.bridge.portal_store.all():
            if portal.room_id is None or not self.hs.is_joined(portal.room_id, user_id):
                continue
            client = await self._quiet_client(portal, user_id)
            if isinstance(client, PresenceHandling) and id(client) not in seen:
                seen[id(client)] = client
                await client.handle_matrix_presence(presence, status)


def level_changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """User id -> (old, new) effective level, for the users whose level changed between two
    ``m.room.power_levels`` contents (entries that are not integers count as the default)."""

    def levels(content: dict[str, Any]) -> tuple[dict[str, int], int]:
        default = content.get("users_default", 0)
        default = default if isinstance(default, int) and not isinstance(default, bool) else 0
        users = content.get("users")
        out: dict[str, int] = {}
        if isinstance(users, dict):
            for user_id, level in users.items():
                if isinstance(user_id, str) and isinstance(level, int):
                    if not isinstance(level, bool):
                        out[user_id] = level
        return out, default

    old, old_default = levels(before)
    new, new_default = levels(after)
    changed = {}
    for user_id in old.keys() | new.keys():
        a, b = old.get(user_id, old_default), new.get(user_id, new_default)
        if a != b:
            changed[user_id] = (a, b)
    return changed
