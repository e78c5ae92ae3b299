"""Delta Chat groups and their portals: linking a room (a new group, or secure-joining an
existing one with its invite link), the groups' invite links, puppets following their Matrix
users in and out, and members, name, topic and avatar kept in step both ways."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NamedTuple

from bridge.connector import (
    ChatInfo,
    ChatMember,
    ConnectorError,
    MatrixMembership,
    MatrixRoomMeta,
    MatrixUser,
    Membership,
    NotSupported,
    PortalKey,
    RemoteChatInfo,
    RemoteMembership,
    Sender,
)

from . import files
from .accounts import Accounts
from .calls import CoreCalls
from .chats import Chats
from .config import DeltaChatConfig
from .contacts import Contacts
from .ids import group_alias_localpart, group_handle, is_invite_link, is_special
from .rpc import Rpc, RpcDown, RpcError
from .store import Store

TOPIC_NOTE = "Bridged by mimi-bridge: messages are decrypted at the bridge."
Spawn = Callable[[Coroutine[Any, Any, Any]], None]


class GroupState(NamedTuple):
    """What of a group Matrix was told last."""

    name: str
    avatar: str | None
    members: frozenset[str]
    description: str


def topic_with_note(description: str) -> str:
    """A group's description as its room's topic, with the bridge's note."""
    return f"{description}\n{TOPIC_NOTE}" if description else TOPIC_NOTE


class Groups:
    def __init__(
        self,
        bridge: Any,
        rpc: Rpc,
        calls: CoreCalls,
        store: Store,
        cfg: DeltaChatConfig,
        accounts: Accounts,
        contacts: Contacts,
        chats: Chats,
        outdir: Path,
        log: logging.Logger,
        spawn: Spawn,
    ) -> None:
        self.bridge = bridge
        self.rpc = rpc
        self.calls = calls
        self.store = store
        self.cfg = cfg
        self.accounts = accounts
        self.contacts = contacts
        self.chats = chats
        self.outdir = outdir
        self.log = log
        self.spawn = spawn
        self._state: dict[tuple[int, int], GroupState] = {}
        # Held while a group is changed from Matrix and while its changes are read, so that
        # the bridge's own change is not sent back to Matrix.
        self._locks: dict[tuple[int, int], asyncio.Lock] = {}
        self._pending_link_notice: dict[PortalKey, str] = {}

    # --- portals --------------------------------------------------------------------------

    async def resolve(self, handle: str, user: MatrixUser | None) -> ChatInfo | None:
        """A group portal's info; an invite link is joined first (when a Matrix user asks)."""
        grpid = self.store.grpid_of.get(handle)
        if grpid is None and is_invite_link(handle):
            if user is None:
                return None
            grpid = await self.join_link(handle)
        if grpid is None:
            return None
        return await self.info(grpid)

    async def info(self, grpid: str) -> ChatInfo | None:
        bridge_account = self.accounts.bridge_account
        chat_id = await self.chats.bridge_chat(grpid)
        if chat_id is None:
            return None
        chat = await self.rpc.call("get_full_chat_by_id", bridge_account, chat_id)
        members = []
        for cid in chat.get("contactIds") or []:
            if not is_special(cid):
                addr, _ = await self.contacts.address(bridge_account, cid)
                if not self.accounts.is_ours(addr):
                    members.append(addr)
        topic = None
        with contextlib.suppress(RpcError):
            topic = await self.rpc.call("get_chat_description", bridge_account, chat_id)
        return ChatInfo(name=str(chat.get("name") or ""), topic=topic or None, members=members)

    async def join_link(self, link: str) -> str:
        """Secure-join a group with its invite link; the group id once the inviter's core
        has let the bridge in."""
        bridge_account = self.accounts.bridge_account
        try:
            qr = await self.rpc.call("check_qr", bridge_account, link)
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
            alias = f"#deltachat_{group_alias_localpart(grpid)}:{self.bridge.domain}"
            raise ConnectorError(f"this group is bridged already: join {alias}")
        # The handle is known before the bridge's account is in the group, so that the
        # group's first events find this portal.
        await self.store.add_group(link, grpid)
        if await self.chats.bridge_chat(grpid) is not None:
            return grpid
        chat_id = int(await self.calls.call("secure_join", bridge_account, link))
        self.chats.remember(bridge_account, chat_id, grpid)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while loop.time() < deadline:
            chat = await self.rpc.call("get_full_chat_by_id", bridge_account, chat_id)
            if chat.get("selfInGroup") and chat.get("canSend"):
                return grpid
            await asyncio.sleep(0.25)
        raise ConnectorError(
            "the group's inviter did not answer within a minute (their Delta Chat must be"
            " online); try again later"
        )

    async def link(self, user: MatrixUser, portal: PortalKey) -> ChatInfo:
        """``link deltachat <name>`` creates a group for the room; ``link deltachat <invite
        link>`` joins an existing one."""
        name = portal.remote_id
        if name in self.store.grpid_of:
            info = await self.info(self.store.grpid_of[name])
            if info is None:
                raise ConnectorError("the bridge is not in that group any more")
            return info
        if is_invite_link(name):
            grpid = await self.join_link(name)
            info = await self.info(grpid)
            assert info is not None
            return info
        bridge_account = self.accounts.bridge_account
        chat = int(await self.calls.call("create_group_chat", bridge_account, name, False))
        new_grpid = await self.chats.grpid_of_chat(bridge_account, chat)
        if new_grpid is None:
            raise ConnectorError("Delta Chat did not create the group")
        await self.store.add_group(name, new_grpid)
        self._pending_link_notice[portal] = user.user_id
        return ChatInfo(name=name)

    async def portal_opened(self, portal: PortalKey) -> None:
        """A group created by ``link``: its Matrix user hears the invite link."""
        user_id = self._pending_link_notice.pop(portal, None)
        if user_id is None:
            return
        grpid = self.store.grpid_of.get(portal.remote_id)
        if grpid is None:
            return
        chat = await self.chats.bridge_chat(grpid)
        if chat is None:
            return
        link = await self.rpc.call(
            "get_chat_securejoin_qr_code", self.accounts.bridge_account, chat
        )
        self.spawn(
            self.bridge.notify(
                user_id,
                f"This room is now the Delta Chat group {portal.remote_id!r}. Delta Chat users"
                f" join with this invite link: {link}",
                portal,
            )
        )

    def portal_closed(self, portal: PortalKey) -> None:
        self._pending_link_notice.pop(portal, None)

    async def invite_link(self, handle: str) -> str:
        """The invite link of a bridged group, by its handle (or its group id)."""
        grpids = self.store.grpid_of
        grpid = grpids.get(handle) or grpids.get(group_handle(handle))
        if grpid is None:
            raise ConnectorError(f"no bridged Delta Chat group {handle!r}")
        chat = await self.chats.bridge_chat(grpid)
        if chat is None:
            raise ConnectorError("the bridge is not in that group any more")
        return str(
            await self.calls.call("get_chat_securejoin_qr_code", self.accounts.bridge_account, chat)
        )

    # --- puppets --------------------------------------------------------------------------

    async def puppet_ready(self, account: int, handle: str) -> bool:
        """Whether a puppet can speak in a group's portal. A puppet not in the group yet is
        added by the bridge's account in the background (meanwhile the relay speaks)."""
        grpid = self.store.grpid_of.get(handle)
        if grpid is None:
            return False
        if await self.chats.chat_of_group(account, grpid) is None:
            self.spawn(self._quietly(self.ensure_puppet(account, grpid)))
            return False
        return True

    async def _quietly(self, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            await coro
        except Exception as e:
            self.log.warning("%s", e)

    async def ensure_puppet(self, account: int, grpid: str) -> None:
        """The bridge's account adds a puppet to a group it is not in."""
        bridge_chat = await self.chats.bridge_chat(grpid)
        if bridge_chat is None or await self.chats.chat_of_group(account, grpid) is not None:
            return
        cid = await self._puppet_contact(account)
        if cid is None:
            return
        # The puppet must know the bridge's key too, to accept the group.
        await self.contacts.with_key(account, self.cfg.address)
        await self.calls.call("add_contact_to_chat", self.accounts.bridge_account, bridge_chat, cid)

    async def _puppet_contact(self, account: int) -> int | None:
        """A puppet account as a contact of the bridge's account."""
        return await self.contacts.with_key(
            self.accounts.bridge_account, self.accounts.addr_of_account[account]
        )

    # --- Matrix -> Delta Chat -------------------------------------------------------------

    async def membership(self, account: int, user_id: str | None, change: MatrixMembership) -> None:
        """Matrix membership through an account (``user_id`` None: the relay)."""
        portal = change.portal
        if portal.receiver:
            return  # a DM: nothing to change on Delta Chat
        grpid = self.store.grpid_of.get(portal.remote_id)
        if grpid is None:
            return
        bridge_chat = await self.chats.bridge_chat(grpid)
        if change.target is None:
            # The Matrix user joined or left: their puppet follows.
            if user_id is None or bridge_chat is None:
                return
            if change.membership == Membership.JOIN:
                await self.ensure_puppet(account, grpid)
            elif change.membership == Membership.LEAVE:
                cid = await self._puppet_contact(account)
                if cid is not None:
                    await self.calls.call(
                        "remove_contact_from_chat", self.accounts.bridge_account, bridge_chat, cid
                    )
            return
        chat = await self.chats.chat_of_group(account, grpid)
        if chat is None:
            raise ConnectorError("your Delta Chat account is not in this group")
        addr = change.target.remote_id
        cid = await self.contacts.in_chat(account, chat, addr)
        if cid is None:
            cid = await self.contacts.with_key(account, addr)
        if change.membership == Membership.INVITE:
            if cid is None:
                raise ConnectorError(
                    f"Delta Chat has no key for {addr}: they can join with the group's invite"
                    " link (`deltachat invite`)"
                )
            await self.calls.call("add_contact_to_chat", account, chat, cid)
        elif change.membership in (Membership.KICK, Membership.BAN):
            if cid is not None:
                await self.calls.call("remove_contact_from_chat", account, chat, cid)
            if change.membership == Membership.BAN:
                raise NotSupported(
                    "Delta Chat has no bans: they were removed from the group and can be added"
                    " again"
                )

    async def room_meta(self, account: int, change: MatrixRoomMeta) -> None:
        """A room's name, topic (without the bridge's note) and avatar become the group's
        name, description and image."""
        if change.portal.receiver:
            raise NotSupported("a Delta Chat direct chat has no name or topic")
        chat = await self.chats.chat_or_error(account, change.portal)
        async with self._lock(account, chat):
            if change.name is not None:
                await self.calls.call("set_chat_name", account, chat, change.name)
            if change.topic is not None:
                topic = change.topic.replace(TOPIC_NOTE, "").strip()
                await self.calls.call("set_chat_description", account, chat, topic)
                if TOPIC_NOTE not in change.topic:
                    # The room keeps saying that messages are decrypted at the bridge.
                    await self.bridge.emit(
                        RemoteChatInfo(
                            portal=change.portal,
                            sender=Sender(self.accounts.addr_of_account[account]),
                            topic=topic_with_note(topic),
                        )
                    )
            if change.avatar is not None and change.avatar.data:
                ext = mimetypes.guess_extension(change.avatar.mimetype) or ".jpg"
                name = change.avatar.filename or "avatar"
                if not Path(name).suffix:
                    name += ext
                async with files.staged(self.outdir, name, change.avatar.data) as path:
                    await self.calls.call("set_chat_profile_image", account, chat, str(path))
            # What the group is now is what Matrix has: not sent back.
            with contextlib.suppress(RpcError, RpcDown):
                full = await self.rpc.call("get_full_chat_by_id", account, chat)
                self._state[(account, chat)] = await self._read_state(account, full)

    def _lock(self, account: int, chat_id: int) -> asyncio.Lock:
        return self._locks.setdefault((account, chat_id), asyncio.Lock())

    # --- Delta Chat -> Matrix -------------------------------------------------------------

    async def message_seen(
        self, account: int, chat: dict[str, Any], portal: PortalKey, sender: Sender
    ) -> None:
        """A message arrived in a group: its state is noted, and a group only a puppet is in
        (or a contact request) brings its Matrix user into the portal."""
        await self._note(account, chat, portal, emit=False)
        target = None
        user = self.accounts.user_of_account.get(account)
        if account != self.accounts.bridge_account and user is not None:
            # A group only this puppet is in: its owner is invited to the portal.
            target = Sender(self.accounts.addr_of_account[account], None, True, user)
        elif chat.get("isContactRequest") and self.cfg.dm_receiver:
            target = Sender("", None, True, self.cfg.dm_receiver)
        if target is not None:
            await self.bridge.emit(
                RemoteMembership(
                    portal=portal, sender=sender, membership=Membership.INVITE, target=target
                )
            )

    async def chat_modified(self, account: int, chat_id: int) -> None:
        async with self._lock(account, chat_id):
            await self._chat_modified(account, chat_id)

    async def _chat_modified(self, account: int, chat_id: int) -> None:
        try:
            chat = await self.rpc.call("get_full_chat_by_id", account, chat_id)
        except RpcError:
            return
        if chat["chatType"] != "Group":
            return
        if chat.get("isContactRequest"):
            if account == self.accounts.bridge_account or not await self._added_by_bridge(
                account, chat
            ):
                return
            await self.rpc.call("accept_chat", account, chat_id)
        portal = await self.chats.portal_of(account, chat)
        if portal is None:
            return
        await self._note(account, chat, portal, emit=True)

    async def _added_by_bridge(self, account: int, chat: dict[str, Any]) -> bool:
        """A puppet added to a group by the bridge's account (a Matrix user joined)."""
        for cid in chat.get("contactIds") or []:
            if is_special(cid):
                continue
            addr, _ = await self.contacts.address(account, cid)
            if addr == self.cfg.address:
                return True
        return False

    async def _read_state(self, account: int, chat: dict[str, Any]) -> GroupState:
        addrs = []
        for cid in chat.get("contactIds") or []:
            if not is_special(cid):
                addrs.append((await self.contacts.address(account, cid))[0])
        description = ""
        with contextlib.suppress(RpcError):
            description = str(
                await self.rpc.call("get_chat_description", account, int(chat["id"])) or ""
            )
        return GroupState(
            str(chat.get("name") or ""), chat.get("profileImage"), frozenset(addrs), description
        )

    async def _note(
        self, account: int, chat: dict[str, Any], portal: PortalKey, emit: bool
    ) -> None:
        """Name, description, avatar and members of a group: sent to Matrix when they
        changed."""
        chat_id = int(chat["id"])
        members: list[Sender] = []
        for cid in chat.get("contactIds") or []:
            if not is_special(cid):
                members.append(await self.contacts.sender(account, cid))
        state = await self._read_state(account, chat)
        addrs = state.members
        before = self._state.get((account, chat_id))
        self._state[(account, chat_id)] = state
        if not emit or before == state:
            return
        avatar = None
        if state.avatar and (before is None or before.avatar != state.avatar):
            avatar = await files.read_picture(str(state.avatar))
        topic = None
        if (before is None and state.description) or (
            before is not None and before.description != state.description
        ):
            topic = topic_with_note(state.description)
        await self.bridge.emit(
            RemoteChatInfo(
                portal=portal,
                sender=Sender(self.accounts.addr_of_account[account]),
                name=state.name if before is None or before.name != state.name else None,
                topic=topic,
                avatar=avatar,
                members=[ChatMember(m) for m in members if not m.is_from_me],
            )
        )
        if before is not None:
            for gone in sorted(before.members - addrs):
                if not self.accounts.is_ours(gone):
                    await self.bridge.emit(
                        RemoteMembership(
                            portal=portal, sender=Sender(gone), membership=Membership.LEAVE
                        )
                    )
