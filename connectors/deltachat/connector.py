"""The Delta Chat connector: Matrix rooms and chats with Delta Chat, the messenger over e-mail.

Everything goes through the official Delta Chat core (``deltachat-rpc-server``), which does
IMAP, SMTP and the Autocrypt/OpenPGP end-to-end encryption; this module talks JSON-RPC to it
over asyncio pipes (:mod:`.rpc`). One core process holds every account of the bridge:

* the bridge's own account (``account`` in the config): the relay, and the member through
  which every bridged group is listened to;
* one account per Matrix user who logged in (``login deltachat <address> <password>``) or
  whom the admin provisioned: their puppet.

Identifiers: a contact's address is the remote user id (ghost ``@deltachat_<address>``); a
message's Message-ID (``rfc724_mid``, the same in every member's core) is its remote id. A DM
is ``PortalKey("deltachat", <contact address>, receiver=<Matrix user id>)``. A group is
``PortalKey("deltachat", <handle>)``: ``g.<grpid>`` for groups the bridge found or created,
or the invite link a Matrix user joined with; ``deltachat_group`` maps handles to the group
id every core shares, and the group's alias is always ``#deltachat_g.<grpid>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import mimetypes
import shutil
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs

from bridge.connector import (
    Attachment,
    ChatInfo,
    ChatMember,
    ConnectorCommand,
    ConnectorError,
    GhostInfo,
    Login,
    LoginResult,
    MatrixEdit,
    MatrixMembership,
    MatrixMessage,
    MatrixReaction,
    MatrixReactionRemove,
    MatrixReceipt,
    MatrixRedaction,
    MatrixRoomMeta,
    MatrixUser,
    Membership,
    MessageContent,
    MessageKind,
    Namespace,
    NetworkClient,
    NetworkConnector,
    NotSupported,
    PortalKey,
    RemoteChatInfo,
    RemoteEdit,
    RemoteMembership,
    RemoteMessage,
    RemoteProfile,
    RemoteReaction,
    RemoteReactionRemove,
    RemoteRedaction,
    Sender,
    SentMessage,
    escape_localpart,
    unescape_localpart,
)

from .config import DeltaChatConfig, parse_config, valid_address
from .rpc import Rpc, RpcDown, RpcError
from .store import MsgRecord, Store

T = TypeVar("T")
NETWORK = "deltachat"
SELF = 1  # the core's contact id for the account itself
TOPIC_NOTE = "Bridged by mimi-bridge: messages are decrypted at the bridge."
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
VIEWTYPE_FOR_MAJOR = {"image": "Image", "video": "Video", "audio": "Audio"}


def grpid_from_link(link: str) -> str | None:
    """The group id (``x=``) of a Delta Chat group invite link."""
    _, _, fragment = link.partition("#")
    params = parse_qs(fragment.partition("&")[2] if "&" in fragment else "")
    values = params.get("x")
    return values[0] if values else None


def is_invite_link(value: str) -> bool:
    low = value.lower()
    return low.startswith("https://i.delta.chat/#") or low.startswith("openpgp4fpr:")


def group_handle(grpid: str) -> str:
    return f"g.{grpid}"


class CoreDown(ConnectorError):
    """The Delta Chat core is restarting; the action is tried again once it runs."""


class RateLimiter:
    """A sliding-window limit of incoming messages per remote sender."""

    def __init__(self, messages: int, seconds: float) -> None:
        self.messages = messages
        self.seconds = seconds
        self._seen: dict[str, deque[float]] = {}
        self._warned: dict[str, float] = {}

    def allow(self, sender: str) -> bool:
        now = time.monotonic()
        q = self._seen.setdefault(sender, deque())
        while q and now - q[0] > self.seconds:
            q.popleft()
        if len(q) >= self.messages:
            return False
        q.append(now)
        return True

    def should_warn(self, sender: str) -> bool:
        now = time.monotonic()
        if now - self._warned.get(sender, -1e9) > self.seconds:
            self._warned[sender] = now
            return True
        return False


class DeltaChatClient(NetworkClient):
    """One Delta Chat account speaking for Matrix users: a puppet, or the bridge's own
    account as the relay."""

    def __init__(self, conn: DeltaChatConnector, account: int, user_id: str | None) -> None:
        self.conn = conn
        self.account = account
        self.user_id = user_id  # None: the relay

    async def handle_matrix_message(self, msg: MatrixMessage) -> SentMessage:
        return await self.conn.retrying(lambda: self.conn.send_message(self, msg))

    async def handle_matrix_edit(self, edit: MatrixEdit) -> SentMessage | None:
        await self.conn.retrying(lambda: self.conn.send_edit(self, edit))
        return None

    async def handle_matrix_redaction(self, redaction: MatrixRedaction) -> None:
        await self.conn.retrying(lambda: self.conn.send_redaction(self, redaction))

    async def handle_matrix_reaction(self, reaction: MatrixReaction) -> SentMessage:
        return await self.conn.retrying(lambda: self.conn.send_reaction(self, reaction))

    async def handle_matrix_reaction_remove(self, removal: MatrixReactionRemove) -> None:
        await self.conn.retrying(lambda: self.conn.remove_reaction(self, removal))

    async def handle_matrix_membership(self, change: MatrixMembership) -> None:
        await self.conn.send_membership(self, change)

    async def handle_matrix_room_meta(self, change: MatrixRoomMeta) -> None:
        await self.conn.send_room_meta(self, change)

    async def handle_matrix_receipt(self, receipt: MatrixReceipt) -> None:
        if self.user_id is None:
            return  # the relay sends no read receipts
        rec = await self.conn.store.by_mid(self.account, receipt.target.remote_id)
        if rec is not None:
            with contextlib.suppress(RpcError, RpcDown):
                await self.conn.rpc.call("markseen_msgs", self.account, [rec.msg_id])


class DeltaChatConnector(NetworkConnector):
    name = "deltachat"
    display_name = "Delta Chat"
    example_config = "connectors/deltachat/config.py"
    login_help = "<address> <password>: your own Delta Chat (e-mail) account"

    def __init__(self, bridge: Any, config: Any) -> None:
        super().__init__(bridge, config)
        self.cfg: DeltaChatConfig = parse_config(config)
        self.rpc: Rpc = Rpc(
            self.cfg.accounts_dir / "accounts",
            self._on_event,
            self.log,
            on_restart=self._resume,
        )
        self.store: Store
        self.bridge_account = 0
        self.account_of_addr: dict[str, int] = {}
        self.addr_of_account: dict[int, str] = {}
        self.user_of_account: dict[int, str] = {}
        self.account_of_user: dict[str, int] = {}
        self.limiter = RateLimiter(self.cfg.rate_messages, self.cfg.rate_seconds)
        self._chat_grpid: dict[tuple[int, int], str | None] = {}
        self._grp_chat: dict[tuple[int, str], int] = {}
        self._chat_state: dict[tuple[int, int], tuple[str, str | None, frozenset[str]]] = {}
        self._reactions: dict[tuple[int, int, int], frozenset[str]] = {}
        self._avatars: dict[str, str] = {}
        self._pending_link_notice: dict[PortalKey, str] = {}
        self._sent_by: dict[tuple[int, int], tuple[str, PortalKey]] = {}
        self._undelivered: set[tuple[int, int]] = set()
        self._dropped: set[tuple[int, int]] = set()  # over the rate limit: not backfilled
        self._account_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._nudger: asyncio.Task[None] | None = None
        self._outdir = self.cfg.accounts_dir / "outgoing"
        self.started = asyncio.Event()

    @classmethod
    def validate_config(cls, config: Any) -> None:
        parse_config(config)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self.store = Store(self.bridge.database())
        await self.store.setup()
        self._outdir.mkdir(parents=True, exist_ok=True)
        try:
            await self.rpc.start()
        except (OSError, RpcDown) as e:
            raise ConnectorError(f"the Delta Chat core did not start: {e}") from e
        await self._load_accounts()
        self.bridge_account = await self._ensure_account(
            self.cfg.address, self.cfg.password, bot=True
        )
        for login in await self.bridge.logins(NETWORK):
            await self._start_login(login.user_id, login.credentials)
        for user_id, prov in self.cfg.provisioned.items():
            if user_id not in self.account_of_user:
                await self._start_login(
                    user_id, {"address": prov.address, "password": prov.password}
                )
        self._nudger = asyncio.create_task(self._nudge_loop(), name="deltachat-nudge")
        self.started.set()

    async def stop(self) -> None:
        if self._nudger:
            self._nudger.cancel()
        for t in list(self._tasks):
            t.cancel()
        await self.rpc.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load_accounts(self) -> None:
        for acc in await self.rpc.call("get_all_accounts"):
            acc_id = int(acc["id"])
            addr = await self.rpc.call("get_config", acc_id, "configured_addr")
            if acc.get("kind") != "Configured" or not addr:
                # A half-made account (a login interrupted while configuring).
                with contextlib.suppress(RpcError):
                    await self.rpc.call("remove_account", acc_id)
                continue
            self.account_of_addr[addr.lower()] = acc_id
            self.addr_of_account[acc_id] = addr.lower()

    async def _ensure_account(
        self, address: str, password: str, bot: bool = False, user_id: str | None = None
    ) -> int:
        """The core account for ``address``: existing, or added and configured now."""
        address = address.lower()
        async with self._account_lock:
            acc = self.account_of_addr.get(address)
            if acc is None:
                acc = await self._configure_new(address, password, bot, user_id)
            if user_id is not None:
                self.user_of_account[acc] = user_id
                self.account_of_user[user_id] = acc
            await self.rpc.call("start_io", acc)
            return acc

    async def _configure_new(
        self, address: str, password: str, bot: bool, user_id: str | None
    ) -> int:
        acc = int(await self.rpc.call("add_account"))
        try:
            name = self.cfg.display_name if bot else (user_id or address)
            if user_id is not None:
                with contextlib.suppress(ConnectorError):
                    name = (await self.bridge.matrix_user(user_id)).display_name
            await self.rpc.call("set_config", acc, "displayname", name)
            await self.rpc.call("set_config", acc, "bot", "1" if bot else "0")
            if bot:
                await self.rpc.call("set_config", acc, "mdns_enabled", "0")
            delay = 1.0
            while True:
                try:
                    await self.rpc.call(
                        "add_or_update_transport", acc, self.cfg.transport(address, password)
                    )
                    break
                except RpcError as e:
                    if not bot or "connect" not in str(e).lower():
                        raise
                    # The bridge's own account: wait for the mail server with backoff.
                    self.log.warning("mail server not reachable for %s (%s); retrying", address, e)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 60)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.rpc.call("remove_account", acc)
            raise
        self.account_of_addr[address] = acc
        self.addr_of_account[acc] = address
        self.log.info("Delta Chat account %s configured (%d)", address, acc)
        return acc

    async def _start_login(self, user_id: str, creds: dict[str, Any]) -> None:
        try:
            await self._ensure_account(
                str(creds["address"]), str(creds["password"]), False, user_id
            )
        except (RpcError, KeyError) as e:
            self.log.error("Delta Chat login of %s not started: %s", user_id, e)
            await self.bridge.notify(user_id, f"Your Delta Chat login could not be resumed: {e}")

    async def _resume(self) -> None:
        """The core came back after a crash: restart IO on every account."""
        for acc in list(self.addr_of_account):
            with contextlib.suppress(RpcError):
                await self.rpc.call("start_io", acc)

    async def _nudge_loop(self) -> None:
        """While sent messages wait for the mail server, ask the core to retry now and then
        (with backoff) instead of waiting for its own longer timers."""
        delay = 2.0
        while True:
            await asyncio.sleep(delay)
            if not self._undelivered or not self.rpc.is_up:
                delay = 2.0
                continue
            with contextlib.suppress(RpcError, RpcDown):
                await self.rpc.call("maybe_network")
            delay = min(delay * 2, 60.0)

    # --- identifiers ----------------------------------------------------------------------

    def namespaces(self) -> list[Namespace]:
        return [Namespace(network=NETWORK, prefix="deltachat_", description="Delta Chat")]

    def ghost_localpart(self, network: str, remote_user_id: str) -> str:
        return escape_localpart(remote_user_id.lower())

    def parse_ghost_localpart(self, network: str, localpart: str) -> str | None:
        try:
            addr = unescape_localpart(localpart)
        except ValueError:
            return None
        return addr if valid_address(addr) else None

    def alias_localpart(self, network: str, remote_room_id: str) -> str:
        grpid = self.store.grpid_of.get(remote_room_id)
        if grpid is None and is_invite_link(remote_room_id):
            grpid = grpid_from_link(remote_room_id)
        return escape_localpart(group_handle(grpid) if grpid else remote_room_id)

    def parse_alias_localpart(self, network: str, localpart: str) -> str | None:
        try:
            value = unescape_localpart(localpart)
        except ValueError:
            return None
        if value.startswith("g."):
            return self.store.handle_of.get(value[2:], value)
        return value

    # --- accounts and chats ---------------------------------------------------------------

    def is_ours(self, addr: str) -> bool:
        return addr.lower() in self.account_of_addr

    async def contact_addr(self, account: int, contact_id: int) -> tuple[str, str]:
        c = await self.rpc.call("get_contact", account, contact_id)
        return str(c["address"]).lower(), str(c.get("displayName") or c["address"])

    async def grpid_of_chat(self, account: int, chat_id: int) -> str | None:
        key = (account, chat_id)
        known = self._chat_grpid.get(key)
        if known:
            return known
        try:
            link = await self.rpc.call("get_chat_securejoin_qr_code", account, chat_id)
            grpid = grpid_from_link(str(link))
        except RpcError:
            grpid = None
        self._chat_grpid[key] = grpid
        if grpid:
            self._grp_chat[(account, grpid)] = chat_id
        return grpid

    async def chat_of_group(self, account: int, grpid: str) -> int | None:
        """The account's chat id for a group, scanning its chat list when not known yet."""
        chat = self._grp_chat.get((account, grpid))
        if chat is not None:
            return chat
        for chat_id in await self.rpc.call("get_chatlist_entries", account, None, None, None):
            if chat_id <= 9 or (account, chat_id) in self._chat_grpid:
                continue
            info = await self.rpc.call("get_basic_chat_info", account, chat_id)
            if info["chatType"] == "Group":
                await self.grpid_of_chat(account, chat_id)
            else:
                self._chat_grpid[(account, chat_id)] = None
        return self._grp_chat.get((account, grpid))

    async def key_contact(self, account: int, addr: str) -> int | None:
        """A contact with a known key (encrypted chats need one), borrowing the key from
        another account of the bridge when this one has not met the contact yet."""
        cid = await self.rpc.call("lookup_contact_id_by_addr", account, addr)
        if cid:
            c = await self.rpc.call("get_contact", account, cid)
            if c.get("isKeyContact"):
                return int(cid)
        for other in self.addr_of_account:
            if other == account:
                continue
            ocid = await self.rpc.call("lookup_contact_id_by_addr", other, addr)
            if not ocid:
                continue
            oc = await self.rpc.call("get_contact", other, ocid)
            if not oc.get("isKeyContact"):
                continue
            vcard = await self.rpc.call("make_vcard", other, [ocid])
            ids = await self.rpc.call("import_vcard_contents", account, vcard)
            if ids:
                return int(ids[0])
        if addr in self.account_of_addr:
            vcard = await self.rpc.call("make_vcard", self.account_of_addr[addr], [SELF])
            ids = await self.rpc.call("import_vcard_contents", account, vcard)
            if ids:
                return int(ids[0])
        return None

    def account_for_dm(self, portal: PortalKey) -> int:
        return self.account_of_user.get(portal.receiver, self.bridge_account)

    async def chat_for(self, account: int, portal: PortalKey) -> int:
        if portal.receiver:
            cid = await self.key_contact(account, portal.remote_id)
            if cid is None:
                raise ConnectorError(
                    f"Delta Chat has no key for {portal.remote_id} yet: ask them to scan an"
                    " invite link (`deltachat invite`) or to write first"
                )
            return int(await self.rpc.call("create_chat_by_contact_id", account, cid))
        grpid = self.store.grpid_of.get(portal.remote_id)
        if grpid is None:
            raise ConnectorError("this room is not linked to a Delta Chat group any more")
        chat = await self.chat_of_group(account, grpid)
        if chat is None:
            raise ConnectorError("the account is not a member of this Delta Chat group")
        return chat

    async def portal_of(self, account: int, chat: dict[str, Any]) -> PortalKey | None:
        """Where an account's chat is bridged to, or None (not bridged, or another account
        listens to it)."""
        chat_id = int(chat["id"])
        if chat["chatType"] == "Single":
            cids = [c for c in chat.get("contactIds") or [] if c > 9]
            if not cids:
                return None
            addr, _ = await self.contact_addr(account, cids[0])
            if account == self.bridge_account:
                receiver = await self.store.dm_owner(addr) or self.cfg.dm_receiver
                if receiver is None:
                    self.log.info("chat from %s not bridged: no policy.dm_receiver", addr)
                    return None
            else:
                receiver = self.user_of_account.get(account)
                if receiver is None:
                    return None
                if self.account_of_user.get(receiver) != account:
                    return None
            return PortalKey(NETWORK, addr, receiver=receiver)
        if chat["chatType"] != "Group":
            return None
        grpid = await self.grpid_of_chat(account, chat_id)
        if grpid is None:
            return None
        if account != self.bridge_account:
            if await self.chat_of_group(self.bridge_account, grpid) is not None:
                return None  # the bridge's account listens to this group
        handle = await self.store.add_group(group_handle(grpid), grpid)
        return PortalKey(NETWORK, handle)

    async def sender_of(self, account: int, contact_id: int) -> Sender:
        addr, name = await self.contact_addr(account, contact_id)
        acc = self.account_of_addr.get(addr)
        if acc is not None:
            user = self.user_of_account.get(acc)
            return Sender(addr, name, is_from_me=True, matrix_user=user)
        return Sender(addr, name)

    # --- incoming events ------------------------------------------------------------------

    async def _on_event(self, account: int, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind in _IGNORED_EVENTS or account not in self.addr_of_account:
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
            await self._chat_modified(account, int(event["chatId"]))
        elif kind in ("MsgDelivered", "SmtpMessageSent"):
            if "msgId" in event:
                self._undelivered.discard((account, int(event["msgId"])))
        elif kind == "MsgFailed":
            await self._failed(account, int(event["msgId"]))
        elif kind == "Error":
            self.log.warning("Delta Chat core (account %d): %s", account, event.get("msg"))
        elif kind == "ErrorSelfNotInGroup":
            self.log.warning("account %d is not in the group: %s", account, event.get("msg"))

    async def _accept_if_allowed(self, account: int, chat: dict[str, Any], sender: str) -> bool:
        """Contact requests: accepted only where the policy allows."""
        if not chat.get("isContactRequest"):
            return True
        puppet = account != self.bridge_account
        allowed = self.cfg.sender_allowed(sender, puppet=puppet) or self.is_ours(sender)
        if not allowed:
            self.log.info(
                "contact request from %s to %s refused by policy",
                sender,
                self.addr_of_account[account],
            )
            return False
        await self.rpc.call("accept_chat", account, int(chat["id"]))
        return True

    async def _incoming(self, account: int, chat_id: int, msg_id: int) -> None:
        msg = await self.rpc.call("get_message", account, msg_id)
        if msg.get("isInfo") or int(msg.get("fromId", 0)) <= 9:
            return  # system messages ("member added"): ChatModified carries the change
        chat = await self.rpc.call("get_full_chat_by_id", account, chat_id)
        sender = await self.sender_of(account, int(msg["fromId"]))
        mid = await self._mid(account, msg_id)
        await self.store.add_message(
            MsgRecord(account, msg_id, mid, chat_id, sender.remote_id, msg.get("text"))
        )
        if not await self._accept_if_allowed(account, chat, sender.remote_id):
            return
        portal = await self.portal_of(account, chat)
        if portal is None:
            return
        if not sender.is_from_me and not self.limiter.allow(sender.remote_id):
            if len(self._dropped) > 50_000:
                self._dropped.clear()
            self._dropped.add((account, msg_id))
            if self.limiter.should_warn(sender.remote_id):
                self.log.warning(
                    "rate limit: messages from %s dropped for %.0f s",
                    sender.remote_id,
                    self.cfg.rate_seconds,
                )
            return
        evt = await self._remote_message(account, msg, mid, portal, sender)
        await self._profile(account, int(msg["fromId"]), sender, portal)
        await self.bridge.emit(evt)
        if chat["chatType"] == "Group":
            await self._note_chat(account, chat, portal, emit=False)
            if account != self.bridge_account and account in self.user_of_account:
                # A group only this puppet is in: its owner is invited to the portal.
                user = self.user_of_account[account]
                await self.bridge.emit(
                    RemoteMembership(
                        portal=portal,
                        sender=sender,
                        membership=Membership.INVITE,
                        target=Sender(self.addr_of_account[account], None, True, user),
                    )
                )
            elif chat.get("isContactRequest") and self.cfg.dm_receiver:
                await self.bridge.emit(
                    RemoteMembership(
                        portal=portal,
                        sender=sender,
                        membership=Membership.INVITE,
                        target=Sender("", None, True, self.cfg.dm_receiver),
                    )
                )

    async def _mid(self, account: int, msg_id: int) -> str:
        info = await self.rpc.call(
            "get_message_info_object", account, msg_id, wait_up=self.cfg.send_timeout
        )
        return str(info["rfc724Mid"])

    async def _remote_message(
        self, account: int, msg: dict[str, Any], mid: str, portal: PortalKey, sender: Sender
    ) -> RemoteMessage:
        text = str(msg.get("text") or "")
        attachments: list[Attachment] = []
        view = msg.get("viewType")
        if msg.get("file") and view not in ("Text", "Webxdc", "Vcard", "Call"):
            size = int(msg.get("fileBytes") or 0)
            name = str(msg.get("fileName") or Path(str(msg["file"])).name)
            if size > self.cfg.max_file_size:
                text = (text + "\n" if text else "") + (
                    f"[file {name} ({size // 1024} KiB) is larger than this bridge carries]"
                )
            else:
                try:
                    data = await asyncio.to_thread(Path(str(msg["file"])).read_bytes)
                except OSError as e:
                    self.log.warning("attachment of %s unreadable: %s", mid, e)
                    text = (text + "\n" if text else "") + f"[file {name} could not be read]"
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
        elif view in ("Webxdc", "Vcard", "Call"):
            label = {"Webxdc": "app", "Vcard": "contact card", "Call": "call"}[str(view)]
            text = (text + "\n" if text else "") + f"[a Delta Chat {label}: open Delta Chat]"
        reply_to = None
        quote = msg.get("quote")
        if isinstance(quote, dict) and quote.get("kind") == "WithMessage":
            qid = int(quote["messageId"])
            rec = await self.store.message(account, qid)
            if rec is not None:
                reply_to = rec.mid
            else:
                with contextlib.suppress(RpcError):
                    reply_to = await self._mid(account, qid)
        kind = MessageKind.NOTICE if msg.get("isBot") else MessageKind.TEXT
        return RemoteMessage(
            portal=portal,
            sender=sender,
            id=mid,
            content=MessageContent(text=text, kind=kind, attachments=attachments),
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
        try:
            data = await asyncio.to_thread(Path(image).read_bytes)
        except OSError:
            return
        mime = mimetypes.guess_type(image)[0] or "image/jpeg"
        await self.bridge.emit(
            RemoteProfile(
                portal=portal,
                sender=sender,
                avatar=Attachment(filename=Path(image).name, mimetype=mime, data=data),
            )
        )

    async def _listening(self, account: int, chat_id: int) -> PortalKey | None:
        try:
            chat = await self.rpc.call("get_full_chat_by_id", account, chat_id)
        except RpcError:
            return None
        if chat.get("isContactRequest"):
            return None
        return await self.portal_of(account, chat)

    async def _changed(self, account: int, chat_id: int, msg_id: int) -> None:
        """Edits: the core changes the message in place and sets ``isEdited``."""
        rec = await self.store.message(account, msg_id)
        if rec is None or self.is_ours(rec.sender):
            return
        try:
            msg = await self.rpc.call("get_message", account, msg_id)
        except RpcError:
            return
        text = str(msg.get("text") or "")
        if not msg.get("isEdited") or text == (rec.body or ""):
            return
        await self.store.set_body(account, msg_id, text)
        portal = await self._listening(account, chat_id)
        if portal is None:
            return
        sender = await self.sender_of(account, int(msg["fromId"]))
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        await self.bridge.emit(
            RemoteEdit(
                portal=portal,
                sender=sender,
                target_id=rec.mid,
                content=MessageContent(text=text),
                id=f"{rec.mid}~{digest}",
            )
        )

    async def _deleted(self, account: int, chat_id: int, msg_id: int) -> None:
        rec = await self.store.message(account, msg_id)
        if rec is None or self.is_ours(rec.sender):
            return
        portal = await self._listening(account, chat_id)
        if portal is None:
            return
        await self.bridge.emit(
            RemoteRedaction(portal=portal, sender=Sender(rec.sender), target_id=rec.mid)
        )

    async def _reactions_changed(
        self, account: int, chat_id: int, msg_id: int, contact_id: int
    ) -> None:
        if contact_id <= 9:
            return
        sender = await self.sender_of(account, contact_id)
        if sender.is_from_me:
            return  # a Matrix user's own reaction through their puppet
        portal = await self._listening(account, chat_id)
        if portal is None:
            return
        rec = await self.store.message(account, msg_id)
        mid = rec.mid if rec else await self._mid(account, msg_id)
        reactions = await self.rpc.call("get_message_reactions", account, msg_id)
        by_contact = (reactions or {}).get("reactionsByContact") or {}
        now = frozenset(by_contact.get(str(contact_id)) or [])
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

    async def _chat_modified(self, account: int, chat_id: int) -> None:
        try:
            chat = await self.rpc.call("get_full_chat_by_id", account, chat_id)
        except RpcError:
            return
        if chat["chatType"] != "Group":
            return
        if chat.get("isContactRequest"):
            if account == self.bridge_account or not await self._added_by_bridge(account, chat):
                return
            await self.rpc.call("accept_chat", account, chat_id)
        portal = await self.portal_of(account, chat)
        if portal is None:
            return
        await self._note_chat(account, chat, portal, emit=True)

    async def _added_by_bridge(self, account: int, chat: dict[str, Any]) -> bool:
        """A puppet added to a group by the bridge's account (a Matrix user joined)."""
        bridge_addr = self.cfg.address
        for cid in chat.get("contactIds") or []:
            if cid > 9 and (await self.contact_addr(account, cid))[0] == bridge_addr:
                return True
        return False

    async def _note_chat(
        self, account: int, chat: dict[str, Any], portal: PortalKey, emit: bool
    ) -> None:
        """Name, avatar and members of a group: sent to Matrix when they changed."""
        chat_id = int(chat["id"])
        members: list[Sender] = []
        for cid in chat.get("contactIds") or []:
            if cid > 9:
                members.append(await self.sender_of(account, cid))
        addrs = frozenset(m.remote_id for m in members)
        state = (str(chat.get("name") or ""), chat.get("profileImage"), addrs)
        before = self._chat_state.get((account, chat_id))
        self._chat_state[(account, chat_id)] = state
        if not emit or before == state:
            return
        avatar = None
        if state[1] and (before is None or before[1] != state[1]):
            with contextlib.suppress(OSError):
                data = await asyncio.to_thread(Path(str(state[1])).read_bytes)
                avatar = Attachment(
                    filename=Path(str(state[1])).name,
                    mimetype=mimetypes.guess_type(str(state[1]))[0] or "image/jpeg",
                    data=data,
                )
        system = Sender(self.addr_of_account[account])
        await self.bridge.emit(
            RemoteChatInfo(
                portal=portal,
                sender=system,
                name=state[0] if before is None or before[0] != state[0] else None,
                avatar=avatar,
                members=[ChatMember(m) for m in members if not m.is_from_me],
            )
        )
        if before is not None:
            for gone in sorted(before[2] - addrs):
                if not self.is_ours(gone):
                    await self.bridge.emit(
                        RemoteMembership(
                            portal=portal, sender=Sender(gone), membership=Membership.LEAVE
                        )
                    )

    async def _failed(self, account: int, msg_id: int) -> None:
        self._undelivered.discard((account, msg_id))
        who = self._sent_by.get((account, msg_id))
        if who is None:
            return
        try:
            msg = await self.rpc.call("get_message", account, msg_id)
            reason = msg.get("error") or "the mail server refused it"
        except RpcError:
            reason = "the mail server refused it"
        await self.bridge.notify(who[0], f"Your message was not delivered: {reason}", who[1])

    # --- Matrix -> Delta Chat -------------------------------------------------------------

    async def retrying(self, action: Callable[[], Awaitable[T]]) -> T:
        """Run a Matrix user's action, again after a core restart (up to ``send_timeout``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.send_timeout
        while True:
            try:
                return await action()
            except (CoreDown, RpcDown) as e:
                left = deadline - loop.time()
                if left <= 0 or not await self.rpc.wait_up(left):
                    raise ConnectorError(f"the Delta Chat core is not running ({e})") from e
                await asyncio.sleep(0.1)

    async def _call(self, method: str, *params: Any) -> Any:
        """A core call on behalf of a Matrix user: waits for a restarting core, and turns
        core errors into readable ones."""
        try:
            return await self.rpc.call(method, *params, wait_up=self.cfg.send_timeout)
        except RpcDown as e:
            raise CoreDown(f"the Delta Chat core is not running ({e})") from e
        except RpcError as e:
            raise ConnectorError(f"Delta Chat refused it: {e}") from e

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
        rec = await self.store.by_mid(account, mid)
        if rec is None:
            return None
        exists = await self._call("get_existing_msg_ids", account, [rec.msg_id])
        return rec.msg_id if exists else None

    async def send_message(self, client: DeltaChatClient, msg: MatrixMessage) -> SentMessage:
        account = client.account
        chat_id = await self._chat_or_error(account, msg.portal)
        data: dict[str, Any] = {"text": msg.content.text}
        if msg.content.kind == MessageKind.EMOTE and not msg.sender.relayed:
            data["text"] = f"* {msg.sender.display_name} {msg.content.text}"
        if msg.reply_to is not None:
            quoted = await self._local_msg(account, msg.reply_to.remote_id)
            if quoted is not None:
                data["quotedMessageId"] = quoted
            elif msg.reply_to.text:
                data["quotedText"] = msg.reply_to.text
        tmpdir: Path | None = None
        if msg.content.attachments:
            att = msg.content.attachments[0]
            if att.data is None:
                raise ConnectorError("the file could not be downloaded from Matrix")
            if len(att.data) > self.cfg.max_file_size:
                raise NotSupported(
                    f"the file is larger than {self.cfg.max_file_size // (1024 * 1024)} MiB,"
                    " the limit of this bridge for Delta Chat"
                )
            tmpdir = self._outdir / uuid.uuid4().hex
            name = Path(att.filename or "file").name or "file"
            path = tmpdir / name
            await asyncio.to_thread(_write, path, att.data)
            data["file"] = str(path)
            data["filename"] = name
            viewtype = VIEWTYPE_FOR_MAJOR.get(att.mimetype.split("/", 1)[0], "File")
            if att.mimetype == "image/gif":
                viewtype = "Gif"
            data["viewtype"] = viewtype
            if data["text"] == att.filename or not msg.content.text.strip():
                data["text"] = ""
            if msg.sender.relayed and not data["text"]:
                data["text"] = self.bridge_relay_caption(msg)
        try:
            msg_id = await self._send(account, chat_id, data)
        finally:
            if tmpdir is not None:
                await asyncio.to_thread(_rmtree, tmpdir)
        mid = await self._mid(account, msg_id)
        await self.store.add_message(
            MsgRecord(account, msg_id, mid, chat_id, self.addr_of_account[account], data["text"])
        )
        self._undelivered.add((account, msg_id))
        self._sent_by[(account, msg_id)] = (msg.sender.user_id, msg.portal)
        if len(self._sent_by) > 10_000:
            self._sent_by.pop(next(iter(self._sent_by)))
        return SentMessage(mid)

    @staticmethod
    def bridge_relay_caption(msg: MatrixMessage) -> str:
        return f"{msg.sender.display_name} sent a file"

    async def _chat_or_error(self, account: int, portal: PortalKey) -> int:
        try:
            return await self.chat_for(account, portal)
        except RpcDown as e:
            raise CoreDown(f"the Delta Chat core is not running ({e})") from e
        except RpcError as e:
            raise ConnectorError(f"Delta Chat has no such chat: {e}") from e

    async def _own_target(self, client: DeltaChatClient, target: Any, what: str) -> int:
        """The account's own copy of a message it sent, for edits and deletions."""
        if target.sender_matrix_user is None:
            raise NotSupported(f"Delta Chat only lets the author {what} a message")
        if client.user_id is not None and target.sender_matrix_user != client.user_id:
            raise NotSupported(f"Delta Chat only lets the author {what} a message")
        msg_id = await self._local_msg(client.account, target.remote_id)
        if msg_id is None:
            raise NotSupported(
                f"this message was sent through another Delta Chat account; cannot {what} it"
            )
        return msg_id

    async def send_edit(self, client: DeltaChatClient, edit: MatrixEdit) -> None:
        msg_id = await self._own_target(client, edit.target, "edit")
        await self._call("send_edit_request", client.account, msg_id, edit.content.text)
        await self.store.set_body(client.account, msg_id, edit.content.text)

    async def send_redaction(self, client: DeltaChatClient, redaction: MatrixRedaction) -> None:
        if redaction.target.sender_matrix_user is None:
            raise NotSupported(
                "Delta Chat cannot delete other people's messages; it was removed in Matrix only"
            )
        msg_id = await self._own_target(client, redaction.target, "delete")
        await self._call("delete_messages_for_all", client.account, [msg_id])

    async def _reaction_target(self, client: DeltaChatClient, remote_id: str) -> int:
        msg_id = await self._local_msg(client.account, remote_id)
        if msg_id is None:
            raise ConnectorError("the message is not known to this Delta Chat account")
        return msg_id

    async def send_reaction(self, client: DeltaChatClient, reaction: MatrixReaction) -> SentMessage:
        msg_id = await self._reaction_target(client, reaction.target.remote_id)
        await self._call("send_reaction", client.account, msg_id, [reaction.key])
        note = ""
        if client.user_id is None:
            note = ":relay"
        return SentMessage(f"{reaction.target.remote_id}#{reaction.key}{note}")

    async def remove_reaction(self, client: DeltaChatClient, removal: MatrixReactionRemove) -> None:
        msg_id = await self._reaction_target(client, removal.target.remote_id)
        reactions = await self._call("get_message_reactions", client.account, msg_id)
        mine = ((reactions or {}).get("reactionsByContact") or {}).get(str(SELF)) or []
        if removal.key in mine:
            await self._call("send_reaction", client.account, msg_id, [])

    async def send_membership(self, client: DeltaChatClient, change: MatrixMembership) -> None:
        portal = change.portal
        if portal.receiver:
            return  # a DM: nothing to change on Delta Chat
        grpid = self.store.grpid_of.get(portal.remote_id)
        if grpid is None:
            return
        bridge_chat = await self.chat_of_group(self.bridge_account, grpid)
        if change.target is None:
            # The Matrix user joined or left: their puppet follows.
            if client.user_id is None or bridge_chat is None:
                return
            if change.membership == Membership.JOIN:
                await self.ensure_puppet_in_group(client.account, grpid)
            elif change.membership == Membership.LEAVE:
                cid = await self.key_contact(
                    self.bridge_account, self.addr_of_account[client.account]
                )
                if cid is not None:
                    await self._call(
                        "remove_contact_from_chat", self.bridge_account, bridge_chat, cid
                    )
            return
        chat = await self.chat_of_group(client.account, grpid)
        if chat is None:
            raise ConnectorError("your Delta Chat account is not in this group")
        addr = change.target.remote_id
        cid = await self.key_contact(client.account, addr)
        if change.membership == Membership.INVITE:
            if cid is None:
                raise ConnectorError(
                    f"Delta Chat has no key for {addr}: they can join with the group's invite"
                    " link (`deltachat invite`)"
                )
            await self._call("add_contact_to_chat", client.account, chat, cid)
        elif change.membership in (Membership.KICK, Membership.BAN):
            if cid is not None:
                await self._call("remove_contact_from_chat", client.account, chat, cid)
            if change.membership == Membership.BAN:
                raise NotSupported(
                    "Delta Chat has no bans: they were removed from the group and can be added"
                    " again"
                )

    async def ensure_puppet_in_group(self, account: int, grpid: str) -> None:
        bridge_chat = await self.chat_of_group(self.bridge_account, grpid)
        if bridge_chat is None or await self.chat_of_group(account, grpid) is not None:
            return
        cid = await self.key_contact(self.bridge_account, self.addr_of_account[account])
        if cid is None:
            return
        # The puppet must know the bridge's key too, to accept the group.
        await self.key_contact(account, self.cfg.address)
        await self._call("add_contact_to_chat", self.bridge_account, bridge_chat, cid)

    async def send_room_meta(self, client: DeltaChatClient, change: MatrixRoomMeta) -> None:
        if change.portal.receiver:
            raise NotSupported("a Delta Chat direct chat has no name or topic")
        chat = await self._chat_or_error(client.account, change.portal)
        if change.name is not None:
            await self._call("set_chat_name", client.account, chat, change.name)
        if change.topic is not None:
            topic = change.topic.replace(TOPIC_NOTE, "").strip()
            await self._call("set_chat_description", client.account, chat, topic)
        if change.avatar is not None and change.avatar.data:
            path = self._outdir / uuid.uuid4().hex / (change.avatar.filename or "avatar.jpg")
            await asyncio.to_thread(_write, path, change.avatar.data)
            try:
                await self._call("set_chat_profile_image", client.account, chat, str(path))
            finally:
                await asyncio.to_thread(_rmtree, path.parent)

    # --- portals and ghosts ---------------------------------------------------------------

    async def resolve_portal(self, portal: PortalKey, user: MatrixUser | None) -> ChatInfo | None:
        await self.started.wait()
        if portal.receiver:
            account = self.account_for_dm(portal)
            cid = await self.rpc.call("lookup_contact_id_by_addr", account, portal.remote_id)
            name = portal.remote_id
            if cid:
                name = (await self.contact_addr(account, cid))[1]
            return ChatInfo(name=name, is_direct=True)
        grpid = self.store.grpid_of.get(portal.remote_id)
        if grpid is None and is_invite_link(portal.remote_id):
            if user is None:
                return None
            grpid = await self.join_link(portal.remote_id)
        if grpid is None:
            return None
        return await self._group_info(grpid)

    async def _group_info(self, grpid: str) -> ChatInfo | None:
        chat_id = await self.chat_of_group(self.bridge_account, grpid)
        if chat_id is None:
            return None
        chat = await self.rpc.call("get_full_chat_by_id", self.bridge_account, chat_id)
        members = []
        for cid in chat.get("contactIds") or []:
            if cid > 9:
                addr, _ = await self.contact_addr(self.bridge_account, cid)
                if not self.is_ours(addr):
                    members.append(addr)
        topic = None
        with contextlib.suppress(RpcError):
            topic = await self.rpc.call("get_chat_description", self.bridge_account, chat_id)
        return ChatInfo(name=str(chat.get("name") or ""), topic=topic or None, members=members)

    async def join_link(self, link: str) -> str:
        """Secure-join a group with its invite link; the group id once the inviter's core
        has let the bridge in."""
        try:
            qr = await self.rpc.call("check_qr", self.bridge_account, link)
        except RpcError as e:
            raise ConnectorError(f"not a Delta Chat invite link: {e}") from e
        if qr.get("kind") != "askVerifyGroup":
            raise ConnectorError(
                "this is not a group invite link (a contact's link starts a direct chat:"
                " invite their ghost instead)"
            )
        grpid = str(qr["grpid"])
        handle = self.store.handle_of.get(grpid)
        if handle is not None and handle != link:
            alias = f"#deltachat_{escape_localpart(group_handle(grpid))}:{self.bridge.domain}"
            raise ConnectorError(f"this group is bridged already: join {alias}")
        # The handle is known before the bridge's account is in the group, so that the
        # group's first events find this portal.
        await self.store.add_group(link, grpid)
        if await self.chat_of_group(self.bridge_account, grpid) is not None:
            return grpid
        chat_id = int(await self._call("secure_join", self.bridge_account, link))
        self._chat_grpid[(self.bridge_account, chat_id)] = grpid
        self._grp_chat[(self.bridge_account, grpid)] = chat_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while loop.time() < deadline:
            chat = await self.rpc.call("get_full_chat_by_id", self.bridge_account, chat_id)
            if chat.get("selfInGroup") and chat.get("canSend"):
                return grpid
            await asyncio.sleep(0.25)
        raise ConnectorError(
            "the group's inviter did not answer within a minute (their Delta Chat must be"
            " online); try again later"
        )

    async def resolve_ghost(self, network: str, remote_user_id: str) -> GhostInfo | None:
        if not valid_address(remote_user_id):
            return None
        await self.started.wait()
        cid = await self.rpc.call("lookup_contact_id_by_addr", self.bridge_account, remote_user_id)
        if cid:
            return GhostInfo(display_name=(await self.contact_addr(self.bridge_account, cid))[1])
        return GhostInfo(display_name=remote_user_id)

    async def portal_opened(self, portal: PortalKey) -> None:
        user_id = self._pending_link_notice.pop(portal, None)
        if user_id is None:
            return
        grpid = self.store.grpid_of.get(portal.remote_id)
        if grpid is None:
            return
        chat = await self.chat_of_group(self.bridge_account, grpid)
        if chat is None:
            return
        link = await self.rpc.call("get_chat_securejoin_qr_code", self.bridge_account, chat)
        self._spawn(
            self.bridge.notify(
                user_id,
                f"This room is now the Delta Chat group {portal.remote_id!r}. Delta Chat users"
                f" join with this invite link: {link}",
                portal,
            )
        )

    async def portal_closed(self, portal: PortalKey) -> None:
        self._pending_link_notice.pop(portal, None)

    async def client_for(self, user: MatrixUser, portal: PortalKey) -> NetworkClient | None:
        await self.started.wait()
        account = self.account_of_user.get(user.user_id)
        if account is None:
            return None
        if portal.receiver:
            if portal.receiver != user.user_id:
                return None
            return DeltaChatClient(self, account, user.user_id)
        grpid = self.store.grpid_of.get(portal.remote_id)
        if grpid is None:
            return None
        if await self.chat_of_group(account, grpid) is None:
            # Not in the group yet: the bridge's account adds the puppet; meanwhile relay.
            self._spawn(self._quietly(self.ensure_puppet_in_group(account, grpid)))
            return None
        return DeltaChatClient(self, account, user.user_id)

    async def _quietly(self, coro: Any) -> None:
        try:
            await coro
        except Exception as e:
            self.log.warning("%s", e)

    async def relay_client(self, portal: PortalKey) -> NetworkClient | None:
        await self.started.wait()
        if portal.receiver:
            account = self.account_for_dm(portal)
            return DeltaChatClient(self, account, self.user_of_account.get(account))
        return DeltaChatClient(self, self.bridge_account, None)

    # --- capabilities: logins, DMs, plumbing, history, commands ---------------------------

    async def login(self, user: MatrixUser, args: list[str]) -> LoginResult:
        if not self.cfg.logins_enabled:
            raise ConnectorError("logins are disabled on this bridge")
        if len(args) != 2 or not valid_address(args[0]):
            raise ConnectorError("usage: login deltachat <address> <password>")
        address, password = args[0].lower(), args[1]
        if user.user_id in self.account_of_user:
            raise ConnectorError("you are logged in already: logout deltachat first")
        if address in self.account_of_addr:
            raise ConnectorError(f"{address} is in use by this bridge already")
        try:
            await self._ensure_account(address, password, False, user.user_id)
        except RpcError as e:
            raise ConnectorError(f"the mail server did not accept the login: {e}") from e
        return LoginResult(
            login_id=address,
            credentials={"address": address, "password": password},
            remote_name=address,
            message=f"Logged in to Delta Chat as {address}.",
        )

    async def logout(self, login: Login) -> None:
        acc = self.account_of_user.pop(login.user_id, None)
        if acc is None:
            return
        self.user_of_account.pop(acc, None)
        addr = self.addr_of_account.pop(acc, None)
        if addr:
            self.account_of_addr.pop(addr, None)
        with contextlib.suppress(RpcError, RpcDown):
            await self.rpc.call("stop_io", acc)
            await self.rpc.call("remove_account", acc)
        await self.store.forget_account(acc)

    async def open_dm(self, user: MatrixUser, network: str, remote_user_id: str) -> PortalKey:
        addr = remote_user_id.lower()
        if self.is_ours(addr):
            raise ConnectorError("that is an account of this bridge")
        account = self.account_of_user.get(user.user_id, self.bridge_account)
        cid = await self.key_contact(account, addr)
        if cid is None:
            raise ConnectorError(
                f"Delta Chat has no key for {addr} yet: ask them to scan your invite link"
                " (`deltachat invite` in your management room) or to write to"
                f" {self.addr_of_account[account]} first"
            )
        await self._call("create_chat_by_contact_id", account, cid)
        if account == self.bridge_account:
            await self.store.set_dm_owner(addr, user.user_id)
        return PortalKey(NETWORK, addr, receiver=user.user_id)

    async def link(self, user: MatrixUser, portal: PortalKey) -> ChatInfo:
        """``link deltachat <name>`` creates a group for the room; ``link deltachat <invite
        link>`` joins an existing one."""
        name = portal.remote_id
        if name in self.store.grpid_of:
            info = await self._group_info(self.store.grpid_of[name])
            if info is None:
                raise ConnectorError("the bridge is not in that group any more")
            return info
        if is_invite_link(name):
            grpid = await self.join_link(name)
            info = await self._group_info(grpid)
            assert info is not None
            return info
        chat = int(await self._call("create_group_chat", self.bridge_account, name, False))
        new_grpid = await self.grpid_of_chat(self.bridge_account, chat)
        if new_grpid is None:
            raise ConnectorError("Delta Chat did not create the group")
        await self.store.add_group(name, new_grpid)
        self._pending_link_notice[portal] = user.user_id
        return ChatInfo(name=name)

    async def fetch_history(self, portal: PortalKey, limit: int) -> list[RemoteMessage]:
        account = self.account_for_dm(portal) if portal.receiver else self.bridge_account
        try:
            chat = await self.chat_for(account, portal)
            ids = await self.rpc.call("get_message_ids", account, chat, False, False)
        except (ConnectorError, RpcError):
            return []
        out: list[RemoteMessage] = []
        for msg_id in ids[-limit:]:
            if (account, msg_id) in self._dropped:
                continue
            msg = await self.rpc.call("get_message", account, msg_id)
            if msg.get("isInfo") or int(msg.get("fromId", 0)) <= 9:
                continue
            sender = await self.sender_of(account, int(msg["fromId"]))
            if sender.is_from_me:
                continue
            mid = await self._mid(account, msg_id)
            await self.store.add_message(
                MsgRecord(account, msg_id, mid, chat, sender.remote_id, msg.get("text"))
            )
            out.append(await self._remote_message(account, msg, mid, portal, sender))
        return out

    def commands(self) -> list[ConnectorCommand]:
        return [
            ConnectorCommand(
                "invite",
                "an invite link: your own account's (or the bridge's) for direct chats, or a"
                " linked group's",
                self.cmd_invite,
                args="[group]",
            ),
            ConnectorCommand("status", "the Delta Chat core and its accounts", self.cmd_status),
        ]

    async def cmd_invite(self, user: MatrixUser, args: list[str]) -> str:
        await self.started.wait()
        if args:
            handle = " ".join(args)
            grpids = self.store.grpid_of
            grpid = grpids.get(handle) or grpids.get(group_handle(handle))
            if grpid is None:
                raise ConnectorError(f"no bridged Delta Chat group {handle!r}")
            chat = await self.chat_of_group(self.bridge_account, grpid)
            if chat is None:
                raise ConnectorError("the bridge is not in that group any more")
            link = await self._call("get_chat_securejoin_qr_code", self.bridge_account, chat)
            return f"Delta Chat users join the group with: {link}"
        account = self.account_of_user.get(user.user_id, self.bridge_account)
        link = await self._call("get_chat_securejoin_qr_code", account, None)
        whose = "your" if account != self.bridge_account else "the bridge's"
        return f"Scan or open {whose} Delta Chat invite link to start a chat: {link}"

    async def cmd_status(self, user: MatrixUser, args: list[str]) -> str:
        if not self.rpc.is_up:
            return "The Delta Chat core is not running (restarting)."
        lines = [f"Delta Chat core running (pid {self.rpc.pid}, restarts: {self.rpc.restarts})."]
        for acc, addr in sorted(self.addr_of_account.items()):
            if user.permission != "admin" and self.user_of_account.get(acc) != user.user_id:
                continue
            conn = await self.rpc.call("get_connectivity", acc)
            owner = self.user_of_account.get(acc, "bridge")
            lines.append(f"- {addr} ({owner}): connectivity {conn}")
        return "\n".join(lines)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
