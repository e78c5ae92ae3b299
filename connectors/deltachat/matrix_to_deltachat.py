"""Matrix events -> Delta Chat core calls: messages (with replies and files), edits,
deletions, reactions and read receipts, sent through a Matrix user's puppet account or the
bridge's own account as the relay. Group membership and room names, topics and avatars are
:mod:`.groups`'s."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from bridge.connector import (
    ConnectorError,
    MatrixEdit,
    MatrixMessage,
    MatrixReaction,
    MatrixReactionRemove,
    MatrixReceipt,
    MatrixRedaction,
    MessageKind,
    MessageRef,
    NotSupported,
    SentMessage,
)

from . import files
from .accounts import Accounts
from .calls import CoreCalls
from .chats import Chats
from .config import DeltaChatConfig
from .delivery import Deliveries
from .formatting import to_deltachat
from .ids import SELF
from .messages import message_id, reactions_by
from .own_sends import OwnSends
from .rpc import Rpc, RpcDown, RpcError
from .store import MsgRecord, Store

VIEWTYPE_FOR_MAJOR = {"image": "Image", "video": "Video", "audio": "Audio"}


def viewtype_for(mimetype: str) -> str:
    if mimetype == "image/gif":
        return "Gif"
    return VIEWTYPE_FOR_MAJOR.get(mimetype.split("/", 1)[0], "File")


def relay_caption(msg: MatrixMessage) -> str:
    """The text of a file the relay sends for someone (Delta Chat shows no sender name)."""
    return f"{msg.sender.display_name} sent a file"


class MatrixToDeltaChat:
    """Each method acts through one account: ``account``, speaking for ``user_id`` (None:
    the bridge's account as the relay)."""

    def __init__(
        self,
        bridge: Any,
        rpc: Rpc,
        calls: CoreCalls,
        store: Store,
        cfg: DeltaChatConfig,
        accounts: Accounts,
        chats: Chats,
        deliveries: Deliveries,
        own_sends: OwnSends,
        outdir: Path,
    ) -> None:
        self.bridge = bridge
        self.rpc = rpc
        self.calls = calls
        self.store = store
        self.cfg = cfg
        self.accounts = accounts
        self.chats = chats
        self.deliveries = deliveries
        self.own_sends = own_sends
        self.outdir = outdir

    # --- messages -------------------------------------------------------------------------

    async def message(self, account: int, msg: MatrixMessage) -> SentMessage:
        # In flight until recorded: the core's events about it must not read as another
        # device's message.
        async with self.own_sends.sending(account):
            return await self._message(account, msg)

    async def _message(self, account: int, msg: MatrixMessage) -> SentMessage:
        chat_id = await self.chats.chat_or_error(account, msg.portal)
        text = to_deltachat(msg.content)
        data: dict[str, Any] = {"text": text}
        if msg.content.kind == MessageKind.EMOTE and not msg.sender.relayed:
            data["text"] = f"* {msg.sender.display_name} {text}"
        if msg.reply_to is not None:
            quoted = await self._local_msg(account, msg.reply_to.remote_id)
            if quoted is not None:
                data["quotedMessageId"] = quoted
            elif msg.reply_to.text:
                data["quotedText"] = msg.reply_to.text
        if not msg.content.attachments:
            msg_id = await self._send(account, chat_id, data)
        else:
            att = msg.content.attachments[0]
            if att.data is None:
                raise ConnectorError("the file could not be downloaded from Matrix")
            if len(att.data) > self.cfg.max_file_size:
                raise NotSupported(
                    f"the file is larger than {self.cfg.max_file_size // (1024 * 1024)} MiB,"
                    " the limit of this bridge for Delta Chat"
                )
            name = Path(att.filename or "file").name or "file"
            async with files.staged(self.outdir, name, att.data) as path:
                data["file"] = str(path)
                data["filename"] = name
                data["viewtype"] = viewtype_for(att.mimetype)
                if data["text"] == att.filename or not msg.content.text.strip():
                    data["text"] = ""
                if msg.sender.relayed and not data["text"]:
                    data["text"] = relay_caption(msg)
                msg_id = await self._send(account, chat_id, data)
        mid = await message_id(self.rpc, account, msg_id, self.cfg.send_timeout)
        await self.store.add_message(
            MsgRecord(
                account,
                msg_id,
                mid,
                chat_id,
                self.accounts.addr_of_account[account],
                data["text"],
            )
        )
        await self.deliveries.sent(
            account, msg_id, msg.sender.user_id, msg.portal, mid, data["text"]
        )
        return SentMessage(mid)

    async def _send(self, account: int, chat_id: int, data: dict[str, Any]) -> int:
        """``send_msg`` that neither loses nor doubles a message when the core dies while
        the request is in flight: after the restart the chat is searched for it first."""
        started = time.time() - 1
        deadline = time.monotonic() + self.cfg.send_timeout
        while True:
            try:
                return int(
                    await self.rpc.call(
                        "send_msg", account, chat_id, data, wait_up=self.cfg.send_timeout
                    )
                )
            except RpcDown as e:
                if time.monotonic() > deadline:
                    raise ConnectorError(f"the Delta Chat core is not running ({e})") from e
                with contextlib.suppress(RpcDown, RpcError):
                    await self.rpc.call("get_system_info", wait_up=self.cfg.send_timeout)
                    found = await self._find_sent(account, chat_id, data, started)
                    if found is not None:
                        return found
                await asyncio.sleep(0.2)
            except RpcError as e:
                raise ConnectorError(f"Delta Chat refused the message: {e}") from e

    async def _find_sent(
        self, account: int, chat_id: int, data: dict[str, Any], since: float
    ) -> int | None:
        ids = await self.rpc.call("get_message_ids", account, chat_id, False, False)
        for msg_id in reversed(ids[-20:]):
            msg = await self.rpc.call("get_message", account, msg_id)
            if msg.get("timestamp", 0) < since:
                break
            if msg.get("fromId") == SELF and (msg.get("text") or "") == (data.get("text") or ""):
                return int(msg_id)
        return None

    async def _local_msg(self, account: int, mid: str) -> int | None:
        """The account's own copy of a message, by Message-ID, if it still has it."""
        rec = await self.store.by_mid(account, mid)
        if rec is None:
            return None
        exists = await self.calls.call("get_existing_msg_ids", account, [rec.msg_id])
        return rec.msg_id if exists else None

    # --- edits and deletions --------------------------------------------------------------

    async def _own_target(
        self, account: int, user_id: str | None, target: MessageRef, what: str
    ) -> int:
        """The account's own copy of a message it sent, for edits and deletions."""
        author = target.sender_matrix_user
        if author is None or (user_id is not None and author != user_id):
            raise NotSupported(f"Delta Chat only lets the author {what} a message")
        msg_id = await self._local_msg(account, target.remote_id)
        if msg_id is None:
            raise NotSupported(
                f"this message was sent through another Delta Chat account; cannot {what} it"
            )
        return msg_id

    async def edit(self, account: int, user_id: str | None, edit: MatrixEdit) -> None:
        msg_id = await self._own_target(account, user_id, edit.target, "edit")
        text = to_deltachat(edit.content)
        if edit.content.kind == MessageKind.EMOTE and not edit.sender.relayed:
            text = f"* {edit.sender.display_name} {text}"
        await self.calls.call("send_edit_request", account, msg_id, text)
        await self.store.set_body(account, msg_id, text)

    async def redaction(
        self, account: int, user_id: str | None, redaction: MatrixRedaction
    ) -> None:
        if redaction.target.sender_matrix_user is None:
            raise NotSupported(
                "Delta Chat cannot delete other people's messages; it was removed in Matrix only"
            )
        msg_id = await self._own_target(account, user_id, redaction.target, "delete")
        await self.calls.call("delete_messages_for_all", account, [msg_id])

    # --- reactions and receipts -----------------------------------------------------------

    async def _reaction_target(self, account: int, remote_id: str) -> int:
        msg_id = await self._local_msg(account, remote_id)
        if msg_id is None:
            raise ConnectorError("the message is not known to this Delta Chat account")
        return msg_id

    async def reaction(
        self, account: int, user_id: str | None, reaction: MatrixReaction
    ) -> SentMessage:
        """Delta Chat keeps one reaction per account and message: the account shows the
        latest of its Matrix users' reactions, and whoever replaces another's (or their own
        other emoji) is told in the room."""
        msg_id = await self._reaction_target(account, reaction.target.remote_id)
        before = await self.store.reactions(account, msg_id)
        await self.store.add_reaction(
            account, msg_id, reaction.sender.user_id, reaction.key, reaction.timestamp
        )
        shown = await self._send_reactions(account, msg_id)
        replaced = [(u, e) for u, e in before if e != shown]
        if shown == reaction.key and replaced:
            who, emoji = replaced[-1]
            whose = "your" if who == reaction.sender.user_id else f"{who}'s"
            account_name = "the bridge's account" if user_id is None else "your account"
            await self.bridge.notify(
                reaction.sender.user_id,
                f"Delta Chat keeps one reaction per account: {reaction.key} replaces {whose}"
                f" {emoji} from {account_name} on that message (it comes back if"
                f" {reaction.key} is removed).",
                reaction.portal,
            )
        note = ":relay" if user_id is None else ""
        return SentMessage(f"{reaction.target.remote_id}#{reaction.key}{note}")

    async def reaction_remove(self, account: int, removal: MatrixReactionRemove) -> None:
        msg_id = await self._reaction_target(account, removal.target.remote_id)
        await self.store.remove_reaction(account, msg_id, removal.sender.user_id, removal.key)
        await self._send_reactions(account, msg_id, removed=removal.key)

    async def _send_reactions(self, account: int, msg_id: int, removed: str | None = None) -> str:
        """Make the account's reaction to a message the latest one of its Matrix users that is
        still there (after a removal, an earlier one comes back); that emoji, or ""."""
        reactions = await self.store.reactions(account, msg_id)
        wanted = reactions[-1][1] if reactions else ""
        now = reactions_by(await self.calls.call("get_message_reactions", account, msg_id), SELF)
        current = now[0] if now else ""
        if removed is not None and not wanted and current != removed:
            return current  # the account's reaction is not one of its Matrix users'
        if wanted != current:
            await self.calls.call("send_reaction", account, msg_id, [wanted] if wanted else [])
        return wanted

    async def receipt(self, account: int, user_id: str | None, receipt: MatrixReceipt) -> None:
        if user_id is None:
            return  # the relay sends no read receipts
        rec = await self.store.by_mid(account, receipt.target.remote_id)
        if rec is not None:
            with contextlib.suppress(RpcError, RpcDown):
                await self.rpc.call("markseen_msgs", account, [rec.msg_id])
