"""Delta Chat core events -> RemoteEvents: messages (with quotes, files and avatars), edits,
deletions and reactions, contact requests under the sender policy, the per-sender rate limit,
and history for new portals. Group changes (``ChatModified``) are :mod:`.groups`'s, delivery
reports :mod:`.delivery`'s."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import mimetypes
import time
from pathlib import Path
from typing import Any

from bridge.connector import (
    Attachment,
    ConnectorError,
    MessageContent,
    MessageKind,
    PortalKey,
    RemoteEdit,
    RemoteMessage,
    RemoteProfile,
    RemoteReaction,
    RemoteReactionRemove,
    RemoteRedaction,
    Sender,
)

from . import files
from .accounts import Accounts
from .chats import Chats
from .config import DeltaChatConfig
from .contacts import Contacts
from .delivery import Deliveries
from .formatting import to_matrix
from .groups import Groups
from .ids import SELF, is_special
from .messages import from_person, message_id, reactions_by
from .own_sends import OwnSends
from .rate_limit import RateLimiter
from .rpc import Rpc, RpcError
from .store import MsgRecord, Store

_IGNORED_EVENTS = frozenset(
    {
        "Info",
        "Warning",
        "ImapInboxIdle",
        "ConnectivityChanged",
        "ImapConnected",
        "SmtpConnected",
        "NewBlobFile",
        "DeletedBlobFile",
        "AccountsItemChanged",
        "AccountsChanged",
        "ChatlistItemChanged",
        "ChatlistChanged",
        "ImapMessageDeleted",
        "AccountsBackgroundFetchDone",
        "MsgsNoticed",
        "MsgRead",
        "MsgReadCountChanged",
        "ConfigureProgress",
        "SecurejoinInviterProgress",
        "SecurejoinJoinerProgress",
        "IncomingMsgBunch",
        "ContactsChanged",
    }
)
_NOT_FILES = {"Webxdc": "app", "Vcard": "contact card", "Call": "call"}  # viewtype -> label
_DROPPED_MAX = 50_000


def _with_note(text: str, note: str) -> str:
    return (text + "\n" if text else "") + note


class DeltaChatToMatrix:
    def __init__(
        self,
        bridge: Any,
        rpc: Rpc,
        store: Store,
        cfg: DeltaChatConfig,
        accounts: Accounts,
        contacts: Contacts,
        chats: Chats,
        groups: Groups,
        deliveries: Deliveries,
        own_sends: OwnSends,
        log: logging.Logger,
    ) -> None:
        self.bridge = bridge
        self.rpc = rpc
        self.store = store
        self.cfg = cfg
        self.accounts = accounts
        self.contacts = contacts
        self.chats = chats
        self.groups = groups
        self.deliveries = deliveries
        self.own_sends = own_sends
        self.log = log
        self.limiter = RateLimiter(cfg.rate_messages, cfg.rate_seconds)
        self._reactions: dict[tuple[int, int, int], frozenset[str]] = {}
        self._avatars: dict[str, str] = {}
        self._dropped: set[tuple[int, int]] = set()  # over the rate limit: not backfilled

    async def on_event(self, account: int, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind in _IGNORED_EVENTS or account not in self.accounts.addr_of_account:
            return
        if kind == "IncomingMsg":
            await self._incoming(account, int(event["chatId"]), int(event["msgId"]))
        elif kind == "MsgsChanged":
            if event.get("msgId"):
                await self._changed(account, int(event["chatId"]), int(event["msgId"]))
        elif kind == "MsgDeleted":
            await self._deleted(account, int(event["chatId"]), int(event["msgId"]))
        elif kind == "ReactionsChanged":
            await self._reactions_changed(
                account, int(event["chatId"]), int(event["msgId"]), int(event["contactId"])
            )
        elif kind == "ChatModified":
            await self.groups.chat_modified(account, int(event["chatId"]))
        elif kind in ("MsgDelivered", "SmtpMessageSent"):
            if "msgId" in event:
                self.deliveries.delivered(account, int(event["msgId"]))
        elif kind == "MsgFailed":
            await self.deliveries.failed(account, int(event["msgId"]))
        elif kind == "Error":
            self.log.warning("Delta Chat core (account %d): %s", account, event.get("msg"))
        elif kind == "ErrorSelfNotInGroup":
            self.log.warning("account %d is not in the group: %s", account, event.get("msg"))

    # --- messages -------------------------------------------------------------------------

    async def _record(
        self, account: int, chat_id: int, msg_id: int, msg: dict[str, Any], sender: Sender
    ) -> str:
        """Store a message the account saw; its Message-ID."""
        mid = await message_id(self.rpc, account, msg_id, self.cfg.send_timeout)
        await self.store.add_message(
            MsgRecord(account, msg_id, mid, chat_id, sender.remote_id, msg.get("text"))
        )
        return mid

    async def _incoming(self, account: int, chat_id: int, msg_id: int) -> None:
        msg = await self.rpc.call("get_message", account, msg_id)
        if int(msg.get("fromId", 0)) == SELF:
            await self._from_other_device(account, chat_id, msg_id)
            return
        if not from_person(msg):
            return
        chat = await self.rpc.call("get_full_chat_by_id", account, chat_id)
        sender = await self.contacts.sender(account, int(msg["fromId"]))
        mid = await self._record(account, chat_id, msg_id, msg, sender)
        if not await self._accept_if_allowed(account, chat, sender.remote_id):
            return
        portal = await self.chats.portal_of(account, chat)
        if portal is None:
            return
        if sender.is_from_me and not await self._sent_by_bridge(sender.remote_id, mid):
            # A Matrix user's account wrote it, and not through the bridge: their phone.
            sender = dataclasses.replace(sender, from_other_client=True)
        if not sender.is_from_me and not self.limiter.allow(sender.remote_id):
            if len(self._dropped) > _DROPPED_MAX:
                self._dropped.clear()
            self._dropped.add((account, msg_id))
            if self.limiter.should_warn(sender.remote_id):
                self.log.warning(
                    "rate limit: messages from %s dropped for %.0f s",
                    sender.remote_id,
                    self.cfg.rate_seconds,
                )
                # Told in the room (or to the chat's owner): a drop is never silent.
                await self.bridge.notify(
                    portal.receiver or self.cfg.dm_receiver or "",
                    f"{sender.display_name or sender.remote_id} sends too many messages: the"
                    f" next ones are not bridged for up to {self.cfg.rate_seconds:.0f} s.",
                    portal,
                )
            return
        evt = await self._remote_message(account, msg, mid, portal, sender)
        await self._profile(account, int(msg["fromId"]), sender, portal)
        await self.bridge.emit(evt)
        if chat["chatType"] == "Group":
            await self.groups.message_seen(account, chat, portal, sender)

    async def _sent_by_bridge(self, addr: str, mid: str) -> bool:
        """Whether the bridge sent the message ``mid`` from its account ``addr``."""
        account = self.accounts.account_of_addr.get(addr.lower())
        if account is None:
            return False
        await self.own_sends.settled(account, self.cfg.send_timeout)
        return await self.store.by_mid(account, mid) is not None

    async def _from_other_device(self, account: int, chat_id: int, msg_id: int) -> None:
        """A message that appeared in a puppet account as its own, not sent by the bridge:
        the user wrote it on another device of the account (which sends a copy to itself)."""
        user_id = self.accounts.user_of_account.get(account)
        if user_id is None or self.accounts.account_of_user.get(user_id) != account:
            return
        await self.own_sends.settled(account, self.cfg.send_timeout)
        if await self.store.message(account, msg_id) is not None:
            return  # the bridge's own send, recorded meanwhile
        try:
            msg = await self.rpc.call("get_message", account, msg_id)
        except RpcError:
            return
        if int(msg.get("fromId", 0)) != SELF or msg.get("isInfo"):
            return
        portal = await self.chats.listening(account, chat_id)
        if portal is None:
            return  # not this account's to bridge (the bridge's account listens to the group)
        sender = dataclasses.replace(
            await self.contacts.sender(account, SELF), from_other_client=True
        )
        mid = await self._record(account, chat_id, msg_id, msg, sender)
        await self.bridge.emit(await self._remote_message(account, msg, mid, portal, sender))

    async def _accept_if_allowed(self, account: int, chat: dict[str, Any], sender: str) -> bool:
        """Contact requests: accepted only where the policy allows."""
        if not chat.get("isContactRequest"):
            return True
        puppet = account != self.accounts.bridge_account
        allowed = self.cfg.sender_allowed(sender, puppet=puppet) or self.accounts.is_ours(sender)
        if not allowed:
            self.log.info(
                "contact request from %s to %s refused by policy",
                sender,
                self.accounts.addr_of_account[account],
            )
            return False
        await self.rpc.call("accept_chat", account, int(chat["id"]))
        return True

    async def history(self, portal: PortalKey, limit: int) -> list[RemoteMessage]:
        """The latest messages of a portal's chat (not the Matrix users' own, nor those
        dropped by the rate limit)."""
        account = self.chats.listener(portal)
        try:
            chat = await self.chats.chat_for(account, portal)
            ids = await self.rpc.call("get_message_ids", account, chat, False, False)
        except (ConnectorError, RpcError):
            return []
        out: list[RemoteMessage] = []
        for msg_id in ids[-limit:]:
            if (account, msg_id) in self._dropped:
                continue
            msg = await self.rpc.call("get_message", account, msg_id)
            if not from_person(msg):
                continue
            sender = await self.contacts.sender(account, int(msg["fromId"]))
            if sender.is_from_me:
                continue
            mid = await self._record(account, chat, msg_id, msg, sender)
            out.append(await self._remote_message(account, msg, mid, portal, sender))
        return out

    async def _remote_message(
        self, account: int, msg: dict[str, Any], mid: str, portal: PortalKey, sender: Sender
    ) -> RemoteMessage:
        text = str(msg.get("text") or "")
        attachments: list[Attachment] = []
        view = msg.get("viewType")
        if msg.get("file") and view not in ("Text", *_NOT_FILES):
            size = int(msg.get("fileBytes") or 0)
            name = str(msg.get("fileName") or Path(str(msg["file"])).name)
            if size > self.cfg.max_file_size:
                text = _with_note(
                    text, f"[file {name} ({size // 1024} KiB) is larger than this bridge carries]"
                )
            else:
                try:
                    data = await asyncio.to_thread(Path(str(msg["file"])).read_bytes)
                except OSError as e:
                    self.log.warning("attachment of %s unreadable: %s", mid, e)
                    text = _with_note(text, f"[file {name} could not be read]")
                else:
                    mime = str(
                        msg.get("fileMime")
                        or mimetypes.guess_type(name)[0]
                        or "application/octet-stream"
                    )
                    attachments.append(
                        Attachment(
                            filename=name,
                            mimetype=mime,
                            data=data,
                            size=len(data),
                            width=msg.get("dimensionsWidth") or None,
                            height=msg.get("dimensionsHeight") or None,
                        )
                    )
        elif view in _NOT_FILES:
            text = _with_note(text, f"[a Delta Chat {_NOT_FILES[str(view)]}: open Delta Chat]")
        reply_to = None
        quote = msg.get("quote")
        if isinstance(quote, dict) and quote.get("kind") == "WithMessage":
            qid = int(quote["messageId"])
            rec = await self.store.message(account, qid)
            if rec is not None:
                reply_to = rec.mid
            else:
                with contextlib.suppress(RpcError):
                    reply_to = await message_id(self.rpc, account, qid, self.cfg.send_timeout)
        kind = MessageKind.NOTICE if msg.get("isBot") else MessageKind.TEXT
        return RemoteMessage(
            portal=portal,
            sender=sender,
            id=mid,
            content=MessageContent(
                text=text, html=to_matrix(text), kind=kind, attachments=attachments
            ),
            reply_to=reply_to,
            timestamp=int(msg.get("timestamp") or time.time()) * 1000,
        )

    async def _profile(
        self, account: int, contact_id: int, sender: Sender, portal: PortalKey
    ) -> None:
        """A contact's avatar, uploaded once per picture."""
        if sender.is_from_me:
            return
        c = await self.rpc.call("get_contact", account, contact_id)
        image = c.get("profileImage")
        if not image or self._avatars.get(sender.remote_id) == image:
            return
        self._avatars[sender.remote_id] = image
        avatar = await files.read_picture(image)
        if avatar is not None:
            await self.bridge.emit(RemoteProfile(portal=portal, sender=sender, avatar=avatar))

    # --- edits, deletions, reactions ------------------------------------------------------

    async def _changed(self, account: int, chat_id: int, msg_id: int) -> None:
        """Edits: the core changes the message in place and sets ``isEdited``."""
        rec = await self.store.message(account, msg_id)
        if rec is None:
            await self._from_other_device(account, chat_id, msg_id)
            return
        if self.accounts.is_ours(rec.sender):
            return
        try:
            msg = await self.rpc.call("get_message", account, msg_id)
        except RpcError:
            return
        text = str(msg.get("text") or "")
        if not msg.get("isEdited") or text == (rec.body or ""):
            return
        await self.store.set_body(account, msg_id, text)
        portal = await self.chats.listening(account, chat_id)
        if portal is None:
            return
        sender = await self.contacts.sender(account, int(msg["fromId"]))
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        await self.bridge.emit(
            RemoteEdit(
                portal=portal,
                sender=sender,
                target_id=rec.mid,
                content=MessageContent(text=text, html=to_matrix(text)),
                id=f"{rec.mid}~{digest}",
            )
        )

    async def _deleted(self, account: int, chat_id: int, msg_id: int) -> None:
        rec = await self.store.message(account, msg_id)
        if rec is None or self.accounts.is_ours(rec.sender):
            return
        portal = await self.chats.listening(account, chat_id)
        if portal is None:
            return
        await self.bridge.emit(
            RemoteRedaction(portal=portal, sender=Sender(rec.sender), target_id=rec.mid)
        )

    async def _reactions_changed(
        self, account: int, chat_id: int, msg_id: int, contact_id: int
    ) -> None:
        if is_special(contact_id):
            return
        sender = await self.contacts.sender(account, contact_id)
        if sender.is_from_me:
            return  # a Matrix user's own reaction through their puppet
        portal = await self.chats.listening(account, chat_id)
        if portal is None:
            return
        rec = await self.store.message(account, msg_id)
        mid = rec.mid if rec else await message_id(self.rpc, account, msg_id, self.cfg.send_timeout)
        reactions = await self.rpc.call("get_message_reactions", account, msg_id)
        now = frozenset(reactions_by(reactions, contact_id))
        key = (account, msg_id, contact_id)
        before = self._reactions.get(key, frozenset())
        self._reactions[key] = now
        for emoji in sorted(now - before):
            await self.bridge.emit(
                RemoteReaction(portal=portal, sender=sender, target_id=mid, key=emoji)
            )
        for emoji in sorted(before - now):
            await self.bridge.emit(
                RemoteReactionRemove(portal=portal, sender=sender, target_id=mid, key=emoji)
            )
