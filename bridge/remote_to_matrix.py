"""Remote events -> Matrix. Where a remote message becomes a Matrix event.

Every send uses a transaction id derived from the remote ids, so a retried event is
deduplicated by the homeserver; the id mapping is stored after each send."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import content as contentmod
from .connector import (
    ChatInfo,
    ChatMember,
    Membership,
    PortalKey,
    RemoteAccess,
    RemoteChatInfo,
    RemoteEdit,
    RemoteEvent,
    RemoteMembership,
    RemoteMessage,
    RemotePresence,
    RemoteProfile,
    RemoteReaction,
    RemoteReactionRemove,
    RemoteReceipt,
    RemoteRedaction,
    RemoteTyping,
)
from .db import MessageRow, Portal, ReactionRow
from .matrix.homeserver import MatrixError
from .matrix.txn import derive_txn_id
from .metrics import HOMESERVER_ERROR, INTERNAL_ERROR, REMOTE_TO_MATRIX
from .own_messages import OwnVoice, Voice, mark

if TYPE_CHECKING:
    from .bridge import Bridge

_MAX_BODY = 60_000  # bytes; events are limited to 64 KiB in all


# Remote events that carry what a remote user said or did to a message: their loss is told.
_WHAT: dict[type, str] = {
    RemoteMessage: "message",
    RemoteEdit: "edit",
    RemoteRedaction: "deletion",
    RemoteReaction: "reaction",
}


def _is_matrix_user(value: str) -> bool:
    return value.startswith("@") and ":" in value


def _own(evt: RemoteEvent) -> bool:
    """A Matrix user's own event (their puppet or logged-in account)."""
    return evt.sender.is_from_me and evt.sender.matrix_user is not None


def _echo(evt: RemoteEvent) -> bool:
    """The echo of what the bridge itself sent for a Matrix user: already in Matrix."""
    return _own(evt) and not evt.sender.from_other_client


def _other_client(evt: RemoteEvent) -> bool:
    """What a Matrix user did from another client of their account: shown as theirs."""
    return _own(evt) and evt.sender.from_other_client


class RemoteHandler:
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.hs = bridge.hs
        self.log = bridge.log.getChild("remote")
        self.own = OwnVoice(bridge)

    async def handle(self, evt: RemoteEvent) -> None:
        if evt.portal.network not in self.bridge.networks:
            self.log.warning("event for unknown network %s dropped", evt.portal.network)
            return
        try:
            if isinstance(evt, RemoteProfile):
                await self.profile(evt)
                return
            if isinstance(evt, RemotePresence):
                ghost = await self.ghost(evt)
                await self.hs.set_presence(ghost, evt.presence, evt.status)
                return
            portal = await self.portal_for(evt)
            if portal is None or portal.room_id is None:
                return
            if not await self.bridge.encryption_required.allows(
                portal, isinstance(evt, RemoteMessage)
            ):
                return
            handler = {
                RemoteMessage: self.message,
                RemoteEdit: self.edit,
                RemoteRedaction: self.redaction,
                RemoteReaction: self.reaction,
                RemoteReactionRemove: self.reaction_remove,
                RemoteMembership: self.membership,
                RemoteTyping: self.typing,
                RemoteReceipt: self.receipt,
                RemoteChatInfo: self.chat_info,
                RemoteAccess: self.access,
            }.get(type(evt))
            if handler is None:
                self.log.warning("unknown remote event type %s", type(evt).__name__)
                return
            await handler(evt, portal)  # type: ignore[operator]
        except MatrixError as e:
            user = evt.sender.matrix_user if _other_client(evt) else None
            if e.errcode == "M_UNKNOWN_TOKEN" and user and await self.own.refused(user):
                await self.handle(evt)  # once more, by the bot
                return
            self.log.error("bridging %s to Matrix failed: %s", type(evt).__name__, e)
            await self.tell_failure(evt, f"the homeserver refused it ({e})", HOMESERVER_ERROR)

    async def failed(self, evt: RemoteEvent, error: Exception) -> None:
        """The queue's last resort, after an unexpected error (logged there)."""
        await self.tell_failure(evt, "an internal error in the bridge", INTERNAL_ERROR)

    async def tell_failure(
        self, evt: RemoteEvent, reason: str, counted_as: str | None = None
    ) -> None:
        """A remote user's message that did not reach Matrix is told in its portal, so that
        its Matrix members know something is missing; other events only leave the log.
        ``counted_as``: the metrics' reason, for messages (other events are not counted)."""
        if counted_as is not None and isinstance(evt, RemoteMessage):
            self.bridge.metrics.failed(evt.portal.network, REMOTE_TO_MATRIX, counted_as)
        what = _WHAT.get(type(evt))
        if what is None:
            return
        try:
            portal = await self.bridge.portal_store.get(evt.portal)
        except Exception:
            self.log.exception("cannot look up the portal of a failed %s", what)
            return
        if portal is None or portal.room_id is None:
            self.log.warning("%s from %s lost (no room): %s", what, evt.sender.remote_id, reason)
            return
        name = self.bridge.connector_of(evt.portal.network).display_name
        who = evt.sender.display_name or evt.sender.remote_id
        await self.bridge.send_notice(
            portal.room_id,
            f"A {what} from {who} on {name} could not be bridged: {reason.rstrip('. ')}.",
        )

    async def portal_for(self, evt: RemoteEvent) -> Portal | None:
        portal = await self.bridge.portal_store.get(evt.portal)
        if portal and portal.room_id:
            return portal
        if not isinstance(evt, RemoteMessage) or _echo(evt):
            return None  # only a message opens a new room, and not the echo of one
        if evt.portal.receiver:
            # A direct message to a Matrix user: open the DM room for them.
            user_id = await self.bridge.portal_mgr.dm_receiver_user(evt.portal)
            if user_id is None:
                self.log.warning("direct message for unknown receiver %s", evt.portal.receiver)
                return None
            if self.bridge.permission_of(user_id) is None:
                return None
            if _other_client(evt):
                # Written from the user's other client: the DM is with its addressee.
                ghost = await self.bridge.portal_mgr.ghost(
                    evt.portal.network, evt.portal.remote_id, None
                )
                info = ChatInfo(name=None, is_direct=True)
            else:
                ghost = await self.ghost(evt)
                info = ChatInfo(name=evt.sender.display_name, is_direct=True)
            portal = await self.bridge.portal_mgr.create_room(
                evt.portal, info, invite=[user_id, ghost]
            )
            assert portal.room_id
            await self.hs.ensure_joined(portal.room_id, ghost)
            return portal
        return await self.bridge.portal_mgr.open_portal(evt.portal, None, invite_user=False)

    async def ghost(self, evt: RemoteEvent, portal: Portal | None = None) -> str:
        sender = evt.sender
        user_id = await self.bridge.portal_mgr.ghost(
            evt.portal.network, sender.remote_id, sender.display_name
        )
        if portal and portal.room_id:
            await self.hs.ensure_joined(portal.room_id, user_id)
        return user_id

    async def _voice(self, evt: RemoteEvent, portal: Portal) -> Voice:
        """Who shows ``evt`` in the portal: the sender's ghost, or for what a Matrix user
        wrote from another client of their account, the user (or the bot, marked)."""
        if _other_client(evt) and evt.sender.matrix_user:
            voice = await self.own.voice(portal, evt.sender.matrix_user)
            if portal.room_id and voice.as_user:
                await self.hs.ensure_joined(portal.room_id, voice.as_user)
            return voice
        ghost = await self.ghost(evt, portal)
        return Voice(ghost, ghost, None)

    def _txn(self, evt: RemoteEvent, *parts: str | int) -> str:
        k = evt.portal
        return derive_txn_id(k.network, k.remote_id, k.receiver, type(evt).__name__, *parts)

    async def _rows(self, key: PortalKey, remote_id: str) -> list[MessageRow]:
        return await self.bridge.messages.by_remote(key, remote_id)

    # --- messages ---------------------------------------------------------------------

    async def message(self, evt: RemoteMessage, portal: Portal) -> None:
        assert portal.room_id
        if not evt.fresh_id and await self._rows(portal.key, evt.id):
            return  # already bridged (a retry, or the echo of a Matrix message)
        if _echo(evt):
            return  # sent from Matrix through the user's own puppet
        voice = await self._voice(evt, portal)
        ghost = voice.sender_mxid
        # Mentions are remote user ids, or Matrix user ids for Matrix users' own puppets.
        ghost_of = {
            m: m if _is_matrix_user(m) else self.bridge.ghost_user_id(portal.key.network, m)
            for m in evt.content.mentions
        }
        relates: dict[str, Any] = {}
        reply_event = None
        if evt.reply_to:
            rows = await self._rows(portal.key, evt.reply_to)
            if rows:
                reply_event = rows[0].event_id
                relates["m.in_reply_to"] = {"event_id": reply_event}
        thread_event = None
        if evt.thread_root:
            rows = await self._rows(portal.key, evt.thread_root)
            if rows:
                thread_event = rows[0].event_id
                relates = {
                    "rel_type": "m.thread",
                    "event_id": thread_event,
                    "is_falling_back": reply_event is None,
                    "m.in_reply_to": {"event_id": reply_event or thread_event},
                }
        contents: list[dict[str, Any]] = []
        for att in evt.content.attachments:
            try:
                contents.append(await self._attachment(att, voice.as_user, portal.room_id))
            except MatrixError as e:
                self.log.warning("attachment %s not uploaded: %s", att.filename, e)
                link = f" ({att.url})" if att.url else ""
                contents.append(
                    {
                        "msgtype": "m.notice",
                        "body": f"[file {att.filename} could not be bridged{link}]",
                    }
                )
        if evt.content.text or not contents:
            text = contentmod.text_content(evt.content, ghost_of)
            if len(text["body"].encode()) > _MAX_BODY:
                text["body"] = text["body"].encode()[:_MAX_BODY].decode(errors="ignore") + " […]"
                text.pop("formatted_body", None)
                text.pop("format", None)
            contents.insert(0, text)
        for part, content in enumerate(contents):
            if voice.label:
                content = mark(content, voice.label)
            if relates:
                content["m.relates_to"] = relates
            event_id = await self.hs.send(
                portal.room_id,
                "m.room.message",
                content,
                txn_id=self._txn(evt, evt.id, part),
                as_user=voice.as_user,
                timestamp=evt.timestamp,
            )
            # Written behind: the room's next message does not wait for the database.
            self.bridge.messages.insert_later(
                [
                    MessageRow(
                        portal=portal.key,
                        remote_id=evt.id,
                        part=part,
                        room_id=portal.room_id,
                        event_id=event_id,
                        sender_id=evt.sender.remote_id,
                        sender_mxid=ghost,
                        timestamp=evt.timestamp,
                        reply_to=reply_event,
                        thread_root=thread_event,
                        body=str(content.get("body", "")),
                    )
                ]
            )
        self.bridge.metrics.bridged_to_matrix(portal.key.network, evt)

    async def _attachment(
        self, att: Any, ghost: str | None, room_id: str | None = None
    ) -> dict[str, Any]:
        if att.data is None:
            if att.url:
                return {"msgtype": "m.text", "body": f"{att.filename}: {att.url}"}
            raise MatrixError("M_INVALID_PARAM", "attachment has neither data nor url")
        crypto = self.bridge.crypto
        if crypto is not None and room_id and await crypto.is_encrypted(room_id, ghost):
            # Encrypted rooms get encrypted attachments: the media repo holds ciphertext.
            data, file = await crypto.encrypt_file(att.data)
            mxc = await self.hs.upload(data, "application/octet-stream", att.filename, ghost)
            content = contentmod.media_content(att, mxc)
            content["file"] = {**file, "url": content.pop("url")}
            return content
        mxc = await self.hs.upload(att.data, att.mimetype, att.filename, as_user=ghost)
        return contentmod.media_content(att, mxc)

    async def edit(self, evt: RemoteEdit, portal: Portal) -> None:
        assert portal.room_id
        rows = await self._rows(portal.key, evt.target_id)
        if not rows:
            self.log.info("edit of unknown message %s ignored", evt.target_id)
            return
        if _echo(evt):
            return  # the bridge made this edit for the user
        target = rows[0]
        voice = await self._voice(evt, portal)
        if target.sender_mxid != voice.sender_mxid or (
            voice.label is not None and target.sender_id != evt.sender.remote_id
        ):
            self.log.warning("edit of %s by another sender refused", evt.target_id)
            return
        new = contentmod.text_content(evt.content)
        if voice.label:
            new = mark(new, voice.label)
        content = {
            **{k: v for k, v in new.items() if k != "m.mentions"},
            "body": f"* {new['body']}",
            "m.new_content": new,
            "m.relates_to": {"rel_type": "m.replace", "event_id": target.event_id},
        }
        if "formatted_body" in new:
            content["formatted_body"] = f"* {new['formatted_body']}"
        await self.hs.send(
            portal.room_id,
            "m.room.message",
            content,
            txn_id=self._txn(evt, evt.target_id, evt.id or evt.timestamp, evt.content.text),
            as_user=voice.as_user,
            timestamp=evt.timestamp,
        )
        await self.bridge.messages.record_edit(target, evt.content.text)

    async def redaction(self, evt: RemoteRedaction, portal: Portal) -> None:
        assert portal.room_id
        rows = await self._rows(portal.key, evt.target_id)
        voice = await self._voice(evt, portal) if _other_client(evt) else None
        ghost = voice.sender_mxid if voice else await self.ghost(evt)
        for row in rows:
            # The original sender redacts their own. A moderator redacts others' messages as
            # its ghost when that ghost is in the room (so Matrix shows who did it), and
            # through the bot when the ghost lacks the power there.
            own = row.sender_mxid == ghost
            if voice is not None:
                as_user = voice.as_user if own else None
            else:
                as_user = ghost if own or self.hs.is_joined(portal.room_id, ghost) else None
            try:
                await self.hs.redact(
                    portal.room_id,
                    row.event_id,
                    as_user=as_user,
                    txn_id=self._txn(evt, row.event_id),
                    reason=evt.reason,
                )
            except MatrixError as e:
                if own or as_user is None or e.errcode != "M_FORBIDDEN":
                    raise
                await self.hs.redact(
                    portal.room_id,
                    row.event_id,
                    txn_id=self._txn(evt, row.event_id, "bot"),
                    reason=evt.reason,
                )
            await self.bridge.messages.delete(row)

    async def reaction(self, evt: RemoteReaction, portal: Portal) -> None:
        assert portal.room_id
        rows = await self._rows(portal.key, evt.target_id)
        if not rows:
            return
        if await self.bridge.messages.reaction(
            portal.key, evt.target_id, evt.sender.remote_id, evt.key
        ):
            return  # one reaction per (sender, key)
        if _echo(evt):
            return
        voice = await self._voice(evt, portal)
        etype = "m.reaction"
        content: dict[str, Any] = {
            "m.relates_to": {
                "rel_type": "m.annotation",
                "event_id": rows[0].event_id,
                "key": evt.key,
            }
        }
        if voice.label:
            # The bot's reaction would read as the bot's: a marked reply says whose it is (and
            # is redacted when the reaction is removed).
            etype = "m.room.message"
            notice = {"msgtype": "m.notice", "body": f"reacted with {evt.key}"}
            content = mark(notice, voice.label, sep=" ")
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": rows[0].event_id}}
        try:
            event_id = await self.hs.send(
                portal.room_id,
                etype,
                content,
                txn_id=self._txn(evt, evt.target_id, evt.sender.remote_id, evt.key),
                as_user=voice.as_user,
                timestamp=evt.timestamp,
            )
        except MatrixError as e:
            if e.errcode == "M_DUPLICATE_ANNOTATION":
                return
            raise
        await self.bridge.messages.insert_reaction(
            ReactionRow(
                portal.key,
                evt.target_id,
                evt.sender.remote_id,
                evt.key,
                portal.room_id,
                event_id,
                evt.id,
            )
        )

    async def reaction_remove(self, evt: RemoteReactionRemove, portal: Portal) -> None:
        assert portal.room_id
        row = await self.bridge.messages.reaction(
            portal.key, evt.target_id, evt.sender.remote_id, evt.key
        )
        if row is None or _echo(evt):
            return
        if _other_client(evt):
            as_user = (await self._voice(evt, portal)).as_user
        else:
            as_user = await self.ghost(evt)
        await self.hs.redact(
            portal.room_id, row.event_id, as_user=as_user, txn_id=self._txn(evt, row.event_id)
        )
        await self.bridge.messages.delete_reaction(row.event_id)

    # --- membership and room state ----------------------------------------------------

    async def membership(self, evt: RemoteMembership, portal: Portal) -> None:
        assert portal.room_id
        room = portal.room_id
        if evt.membership == Membership.JOIN:
            if not evt.sender.is_from_me:
                await self.ghost(evt, portal)
            return
        if evt.membership == Membership.LEAVE:
            if evt.sender.is_from_me:
                return
            ghost = self.bridge.ghost_user_id(portal.key.network, evt.sender.remote_id)
            try:
                await self.hs.leave(room, ghost, reason=evt.reason or "")
            except MatrixError as e:
                self.log.debug("ghost %s leave: %s", ghost, e)
            return
        target = evt.target
        if target is None:
            return
        if target.is_from_me and target.matrix_user:
            victim = target.matrix_user
        else:
            victim = self.bridge.ghost_user_id(portal.key.network, target.remote_id)
        actor = evt.sender.display_name or evt.sender.remote_id
        reason = f"{actor}: {evt.reason}" if evt.reason else f"by {actor}"
        if evt.membership == Membership.KICK:
            await self.hs.kick(room, victim, reason)
        elif evt.membership == Membership.BAN:
            await self.hs.ban(room, victim, reason)
        elif evt.membership == Membership.UNBAN:
            await self.hs.unban(room, victim)
        elif evt.membership == Membership.INVITE:
            await self.hs.invite(room, victim)

    async def typing(self, evt: RemoteTyping, portal: Portal) -> None:
        assert portal.room_id
        if evt.sender.is_from_me:
            # From the user's other client: theirs where the bridge can act as them.
            puppet = await self._own_puppet(evt, portal)
            if puppet is not None:
                self.bridge.double_puppets.sent_typing(portal.room_id, puppet, evt.typing)
                await self.hs.typing(portal.room_id, puppet, evt.typing, evt.timeout_ms)
            return
        ghost = await self.ghost(evt, portal)
        await self.hs.typing(portal.room_id, ghost, evt.typing, evt.timeout_ms)

    async def receipt(self, evt: RemoteReceipt, portal: Portal) -> None:
        assert portal.room_id
        puppet = await self._own_puppet(evt, portal) if evt.sender.is_from_me else None
        if evt.sender.is_from_me and puppet is None:
            return
        rows = await self._rows(portal.key, evt.target_id)
        if rows and puppet is not None:
            self.bridge.double_puppets.sent_receipt(portal.room_id, puppet, rows[-1].event_id)
            await self.hs.receipt(portal.room_id, rows[-1].event_id, puppet)
        elif rows:
            ghost = await self.ghost(evt, portal)
            await self.hs.receipt(portal.room_id, rows[-1].event_id, ghost)

    async def _own_puppet(self, evt: RemoteEvent, portal: Portal) -> str | None:
        """For what a Matrix user did on another client: the user, when the bridge can act
        as them in the portal."""
        if not _other_client(evt) or evt.sender.matrix_user is None:
            return None
        return await self.own.puppet(evt.sender.matrix_user, portal.room_id)

    async def chat_info(self, evt: RemoteChatInfo, portal: Portal) -> None:
        assert portal.room_id
        room = portal.room_id
        changed = False
        if evt.name is not None and evt.name != portal.name:
            await self.hs.send_state(room, "m.room.name", {"name": evt.name})
            portal.name, changed = evt.name, True
        if evt.topic is not None and evt.topic != portal.topic:
            await self.hs.send_state(room, "m.room.topic", {"topic": evt.topic})
            portal.topic, changed = evt.topic, True
        if evt.avatar is not None and evt.avatar.data:
            mxc = await self.hs.upload(evt.avatar.data, evt.avatar.mimetype, evt.avatar.filename)
            await self.hs.send_state(room, "m.room.avatar", {"url": mxc})
            portal.avatar_mxc, changed = mxc, True
        if changed:
            await self.bridge.portal_store.save(portal)
        if evt.members is not None:
            await self._members(evt.members, portal)

    async def access(self, evt: RemoteAccess, portal: Portal) -> None:
        """Join rule, the level posting needs and the directory listing, each written only
        when it differs (the bot's own changes are never bridged back). What the bot may not
        change is told in the room."""
        assert portal.room_id
        room = portal.room_id
        name = self.bridge.connector_of(portal.key.network).display_name
        if evt.invite_only is not None and not portal.is_direct:
            rules = await self.hs.get_state(room, "m.room.join_rules") or {}
            wanted = "invite" if evt.invite_only else "public"
            if rules.get("join_rule") != wanted:
                await self._or_tell(
                    room,
                    self.hs.send_state(room, "m.room.join_rules", {"join_rule": wanted}),
                    f"On {name} only invited users may join now"
                    if evt.invite_only
                    else f"On {name} anyone may join now",
                    "join rule",
                )
        if evt.post_level is not None:
            levels = await self.hs.get_state(room, "m.room.power_levels") or {}
            if int(levels.get("events_default") or 0) != evt.post_level:
                await self._or_tell(
                    room,
                    self.hs.send_state(
                        room, "m.room.power_levels", {**levels, "events_default": evt.post_level}
                    ),
                    f"On {name} posting needs power level {evt.post_level} now",
                    "power levels",
                )
        if evt.listed is not None and not portal.is_direct:
            if portal.metadata.get("listed") != evt.listed:
                await self.hs.set_listed(room, evt.listed)
                portal.metadata["listed"] = evt.listed
                await self.bridge.portal_store.save(portal)

    async def _or_tell(self, room: str, change: Any, what: str, thing: str) -> None:
        try:
            await change
        except MatrixError as e:
            if e.errcode != "M_FORBIDDEN":
                raise
            await self.bridge.send_notice(
                room,
                f"{what}, but the bridge's bot may not change this room's {thing}: give it "
                "power level 100 so that the room follows.",
            )

    async def _members(self, members: list[ChatMember], portal: Portal) -> None:
        """A full member snapshot: ghosts join with their power, ghosts no longer listed
        leave (users who left while the bridge was away), and Matrix users whose puppets
        hold channel modes get that power."""
        assert portal.room_id
        room = portal.room_id
        levels: dict[str, int] = {}
        puppets: dict[str, int] = {}
        listed: set[str] = set()
        for member in members:
            if member.sender.is_from_me:
                if member.sender.matrix_user and member.power_level is not None:
                    puppets[member.sender.matrix_user] = member.power_level
                continue
            ghost = await self.bridge.portal_mgr.ghost(
                portal.key.network, member.sender.remote_id, member.sender.display_name
            )
            listed.add(ghost)
            await self.hs.ensure_joined(room, ghost)
            if member.power_level is not None:
                levels[ghost] = member.power_level
        for uid in await self.hs.joined_members(room):
            ghost_key = self.bridge.parse_ghost(uid)
            if ghost_key and ghost_key.network == portal.key.network and uid not in listed:
                try:
                    await self.hs.leave(room, uid, reason="no longer in the conversation")
                except MatrixError as e:
                    self.log.debug("stale ghost %s did not leave: %s", uid, e)
        if levels or puppets:
            await self._power_levels(room, levels, puppets, portal)

    async def _power_levels(
        self,
        room: str,
        levels: dict[str, int],
        puppets: dict[str, int] | None = None,
        portal: Portal | None = None,
    ) -> None:
        current = await self.hs.get_state(room, "m.room.power_levels") or {}
        users = dict(current.get("users") or {})
        new = {**users, **{u: lvl for u, lvl in levels.items() if lvl > 0}}
        for u, lvl in levels.items():
            if lvl <= 0:
                new.pop(u, None)
        if puppets and portal is not None:
            # A Matrix user's own power is theirs: the bridge only raises it, and lowers only
            # what it granted itself.
            granted: dict[str, int] = dict(portal.metadata.get("granted_power") or {})
            default = int(current.get("users_default") or 0)
            for user, lvl in puppets.items():
                have = int(new.get(user, default))
                if lvl > have or (lvl < have and granted.get(user) == have):
                    if lvl > default:
                        new[user] = lvl
                        granted[user] = lvl
                    else:
                        new.pop(user, None)
                        granted.pop(user, None)
            if granted != portal.metadata.get("granted_power", {}):
                portal.metadata["granted_power"] = granted
                await self.bridge.portal_store.save(portal)
        if new != users:
            await self.hs.send_state(room, "m.room.power_levels", {**current, "users": new})

    async def profile(self, evt: RemoteProfile) -> None:
        network = evt.portal.network
        old = await self.bridge.ghosts.get(network, evt.sender.remote_id)
        if evt.new_remote_id and evt.new_remote_id != evt.sender.remote_id:
            # The remote id itself changed (an IRC NICK): the new ghost takes the old one's place.
            new_ghost = await self.bridge.portal_mgr.ghost(
                network, evt.new_remote_id, evt.display_name or evt.new_remote_id
            )
            old_ghost = self.bridge.ghost_user_id(network, evt.sender.remote_id)
            for portal in await self.bridge.portal_store.all(network):
                if portal.room_id and self.hs.is_joined(portal.room_id, old_ghost):
                    await self.hs.ensure_joined(portal.room_id, new_ghost)
                    try:
                        await self.hs.leave(
                            portal.room_id, old_ghost, reason=f"changed name to {evt.new_remote_id}"
                        )
                    except MatrixError as e:
                        self.log.debug("old ghost leave failed: %s", e)
            return
        if evt.display_name and (old is None or old.display_name != evt.display_name):
            await self.bridge.portal_mgr.ghost(network, evt.sender.remote_id, evt.display_name)
        if evt.avatar is not None and evt.avatar.data:
            ghost = await self.ghost(evt)
            mxc = await self.hs.upload(
                evt.avatar.data, evt.avatar.mimetype, evt.avatar.filename, as_user=ghost
            )
            await self.hs.set_avatar(ghost, mxc)
        elif evt.avatar_removed:
            await self.hs.set_avatar(await self.ghost(evt), "")
