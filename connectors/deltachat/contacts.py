"""Contacts as an account's core knows them: their address and name, the :class:`Sender` of
their events, and a contact with a key (encrypted chats need one), borrowed from another
account of the bridge when this one has not met the contact yet."""

from __future__ import annotations

from bridge.connector import Sender

from .accounts import Accounts
from .ids import SELF
from .rpc import Rpc


class Contacts:
    def __init__(self, rpc: Rpc, accounts: Accounts) -> None:
        self.rpc = rpc
        self.accounts = accounts

    async def address(self, account: int, contact_id: int) -> tuple[str, str]:
        """A contact's address (lower case) and display name."""
        c = await self.rpc.call("get_contact", account, contact_id)
        return str(c["address"]).lower(), str(c.get("displayName") or c["address"])

    async def display_name(self, account: int, addr: str) -> str:
        """The name the account knows ``addr`` by, or the address."""
        cid = await self.rpc.call("lookup_contact_id_by_addr", account, addr)
        if cid:
            return (await self.address(account, cid))[1]
        return addr

    async def sender(self, account: int, contact_id: int) -> Sender:
        """The sender of a contact's events; the bridge's accounts are Matrix users' echoes."""
        addr, name = await self.address(account, contact_id)
        acc = self.accounts.account_of_addr.get(addr)
        if acc is not None:
            user = self.accounts.user_of_account.get(acc)
            return Sender(addr, name, is_from_me=True, matrix_user=user)
        return Sender(addr, name)

    async def with_key(self, account: int, addr: str) -> int | None:
        """A contact with a known key, borrowing the key from another account of the bridge
        (or from the bridge's account ``addr`` itself) when this one has not met the contact."""
        cid = await self._key_contact(account, addr)
        if cid is not None:
            return cid
        for other in self.accounts.addr_of_account:
            if other == account:
                continue
            ocid = await self._key_contact(other, addr)
            if ocid is not None:
                cid = await self._import(other, ocid, account)
                if cid is not None:
                    return cid
        own = self.accounts.account_of_addr.get(addr)
        if own is not None:
            return await self._import(own, SELF, account)
        return None

    async def _key_contact(self, account: int, addr: str) -> int | None:
        cid = await self.rpc.call("lookup_contact_id_by_addr", account, addr)
        if cid:
            c = await self.rpc.call("get_contact", account, cid)
            if c.get("isKeyContact"):
                return int(cid)
        # The lookup only finds contacts the account has talked with; a contact it only met
        # in a group (its key gossiped there) is in the contact list.
        for other in await self.rpc.call("get_contact_ids", account, 0, addr) or []:
            c = await self.rpc.call("get_contact", account, other)
            if c.get("isKeyContact") and str(c.get("address", "")).lower() == addr.lower():
                return int(other)
        return None

    async def in_chat(self, account: int, chat_id: int, addr: str) -> int | None:
        """The member of a chat with this address."""
        chat = await self.rpc.call("get_full_chat_by_id", account, chat_id)
        for cid in chat.get("contactIds") or []:
            if cid != SELF and (await self.address(account, cid))[0] == addr.lower():
                return int(cid)
        return None

    async def _import(self, source: int, contact_id: int, account: int) -> int | None:
        """Copy a contact with its key from ``source`` into ``account`` (through a vCard)."""
        vcard = await self.rpc.call("make_vcard", source, [contact_id])
        ids = await self.rpc.call("import_vcard_contents", account, vcard)
        return int(ids[0]) if ids else None
