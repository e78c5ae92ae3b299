"""Which core chat a portal is, and which portal a core chat is. A DM is an account's chat
with the contact (the bridge's account's DMs belong to the Matrix user who opened them, else to
``policy.dm_receiver``); a group is found by its group id (``grpid``, read from the chat's
invite link and cached per account)."""

from __future__ import annotations

import logging
from typing import Any

from bridge.connector import ConnectorError, PortalKey

from .accounts import Accounts
from .calls import CoreCalls, core_down
from .config import DeltaChatConfig
from .contacts import Contacts
from .ids import NETWORK, group_handle, grpid_from_link, is_special
from .rpc import Rpc, RpcDown, RpcError
from .store import Store


class Chats:
    def __init__(
        self,
        rpc: Rpc,
        calls: CoreCalls,
        store: Store,
        cfg: DeltaChatConfig,
        accounts: Accounts,
        contacts: Contacts,
        log: logging.Logger,
    ) -> None:
        self.rpc = rpc
        self.calls = calls
        self.store = store
        self.cfg = cfg
        self.accounts = accounts
        self.contacts = contacts
        self.log = log
        self._chat_grpid: dict[tuple[int, int], str | None] = {}
        self._grp_chat: dict[tuple[int, str], int] = {}

    # --- groups ---------------------------------------------------------------------------

    def remember(self, account: int, chat_id: int, grpid: str | None) -> None:
        """Which group an account's chat is (None: not a group)."""
        self._chat_grpid[(account, chat_id)] = grpid
        if grpid:
            self._grp_chat[(account, grpid)] = chat_id

    async def grpid_of_chat(self, account: int, chat_id: int) -> str | None:
        known = self._chat_grpid.get((account, chat_id))
        if known:
            return known
        try:
            link = await self.rpc.call("get_chat_securejoin_qr_code", account, chat_id)
            grpid = grpid_from_link(str(link))
        except RpcError:
            grpid = None
        self.remember(account, chat_id, grpid)
        return grpid

    async def chat_of_group(self, account: int, grpid: str) -> int | None:
        """The account's chat id for a group, scanning its chat list when not known yet."""
        chat = self._grp_chat.get((account, grpid))
        if chat is not None:
            return chat
        for chat_id in await self.rpc.call("get_chatlist_entries", account, None, None, None):
            if is_special(chat_id) or (account, chat_id) in self._chat_grpid:
                continue
            info = await self.rpc.call("get_basic_chat_info", account, chat_id)
            if info["chatType"] == "Group":
                await self.grpid_of_chat(account, chat_id)
            else:
                self.remember(account, chat_id, None)
        return self._grp_chat.get((account, grpid))

    async def bridge_chat(self, grpid: str) -> int | None:
        """The bridge's account's chat of a group (the bridge listens to the group there)."""
        return await self.chat_of_group(self.accounts.bridge_account, grpid)

    # --- portals -> chats -----------------------------------------------------------------

    def listener(self, portal: PortalKey) -> int:
        """The account a portal's chat is read through: the DM's own account, or the
        bridge's for groups."""
        if portal.receiver:
            return self.accounts.speaking_for(portal.receiver)
        return self.accounts.bridge_account

    async def chat_for(self, account: int, portal: PortalKey) -> int:
        if portal.receiver:
            cid = await self.contacts.with_key(account, portal.remote_id)
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

    async def chat_or_error(self, account: int, portal: PortalKey) -> int:
        """:meth:`chat_for`, for a Matrix user: core errors become readable ones."""
        try:
            return await self.chat_for(account, portal)
        except RpcDown as e:
            raise core_down(e) from e
        except RpcError as e:
            raise ConnectorError(f"Delta Chat has no such chat: {e}") from e

    async def open_dm(self, user_id: str, remote_user_id: str) -> PortalKey:
        """A DM with a contact, through the Matrix user's puppet or else the bridge's account
        (the DM then belongs to them)."""
        addr = remote_user_id.lower()
        if self.accounts.is_ours(addr):
            raise ConnectorError("that is an account of this bridge")
        account = self.accounts.speaking_for(user_id)
        cid = await self.contacts.with_key(account, addr)
        if cid is None:
            raise ConnectorError(
                f"Delta Chat has no key for {addr} yet: ask them to scan your invite link"
                " (`deltachat invite` in your management room) or to write to"
                f" {self.accounts.addr_of_account[account]} first"
            )
        await self.calls.call("create_chat_by_contact_id", account, cid)
        if account == self.accounts.bridge_account:
            await self.store.set_dm_owner(addr, user_id)
        return PortalKey(NETWORK, addr, receiver=user_id)

    # --- chats -> portals -----------------------------------------------------------------

    async def portal_of(self, account: int, chat: dict[str, Any]) -> PortalKey | None:
        """Where an account's chat is bridged to, or None (not bridged, or another account
        listens to it)."""
        chat_id = int(chat["id"])
        if chat["chatType"] == "Single":
            cids = [c for c in chat.get("contactIds") or [] if not is_special(c)]
            if not cids:
                return None
            addr, _ = await self.contacts.address(account, cids[0])
            if account == self.accounts.bridge_account:
                receiver = await self.store.dm_owner(addr) or self.cfg.dm_receiver
                if receiver is None:
                    self.log.info("chat from %s not bridged: no policy.dm_receiver", addr)
                    return None
            else:
                receiver = self.accounts.user_of_account.get(account)
                if receiver is None:
                    return None
                if self.accounts.account_of_user.get(receiver) != account:
                    return None
            return PortalKey(NETWORK, addr, receiver=receiver)
        if chat["chatType"] != "Group":
            return None
        grpid = await self.grpid_of_chat(account, chat_id)
        if grpid is None:
            return None
        if account != self.accounts.bridge_account:
            if await self.bridge_chat(grpid) is not None:
                return None  # the bridge's account listens to this group
        handle = await self.store.add_group(group_handle(grpid), grpid)
        return PortalKey(NETWORK, handle)

    async def listening(self, account: int, chat_id: int) -> PortalKey | None:
        """The portal of an account's chat, unless it is a contact request (not accepted)."""
        try:
            chat = await self.rpc.call("get_full_chat_by_id", account, chat_id)
        except RpcError:
            return None
        if chat.get("isContactRequest"):
            return None
        return await self.portal_of(account, chat)
