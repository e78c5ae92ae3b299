"""The Delta Chat connector's own tables, in the bridge's database.

* ``deltachat_message``: each message an account of the bridge saw or sent, by the core's
  per-account message id, with its Message-ID (``rfc724_mid``, the same in every account and
  the remote id the core maps), sender address and last text (to notice edits and to map
  deletions, which arrive after the message is gone).
* ``deltachat_group``: portal handle -> group id (the ``grpid`` every member's core shares).
* ``deltachat_dm_owner``: which Matrix user a chat with the bridge's own address belongs to.
* ``deltachat_reaction``: the reactions Matrix users made through an account, per message, in
  order. Delta Chat keeps one reaction per account and message: the account shows the latest
  one still there (several users share the relay; one user may react with several emoji).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class MsgRecord:
    account: int
    msg_id: int
    mid: str
    chat_id: int
    sender: str
    body: str | None


class Store:
    def __init__(self) -> None:
        self.db: Any = None  # the bridge's database, from setup()
        self.handle_of: dict[str, str] = {}  # grpid -> handle
        self.grpid_of: dict[str, str] = {}  # handle -> grpid

    async def setup(self, db: Any) -> None:
        self.db = db
        for row in await self.db.fetch("SELECT handle, grpid FROM deltachat_group"):
            self.handle_of[row["grpid"]] = row["handle"]
            self.grpid_of[row["handle"]] = row["grpid"]

    # --- messages -------------------------------------------------------------------------

    async def add_message(self, rec: MsgRecord) -> None:
        await self.db.execute(
            "INSERT INTO deltachat_message (account, msg_id, mid, chat_id, sender, body)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (account, msg_id) DO UPDATE"
            " SET mid=excluded.mid, chat_id=excluded.chat_id, sender=excluded.sender,"
            " body=excluded.body",
            rec.account,
            rec.msg_id,
            rec.mid,
            rec.chat_id,
            rec.sender,
            rec.body,
        )

    async def set_body(self, account: int, msg_id: int, body: str) -> None:
        await self.db.execute(
            "UPDATE deltachat_message SET body=$3 WHERE account=$1 AND msg_id=$2",
            account,
            msg_id,
            body,
        )

    @staticmethod
    def _rec(row: Any) -> MsgRecord | None:
        if row is None:
            return None
        return MsgRecord(
            row["account"], row["msg_id"], row["mid"], row["chat_id"], row["sender"], row["body"]
        )

    async def message(self, account: int, msg_id: int) -> MsgRecord | None:
        return self._rec(
            await self.db.fetchrow(
                "SELECT * FROM deltachat_message WHERE account=$1 AND msg_id=$2", account, msg_id
            )
        )

    async def by_mid(self, account: int, mid: str) -> MsgRecord | None:
        return self._rec(
            await self.db.fetchrow(
                "SELECT * FROM deltachat_message WHERE account=$1 AND mid=$2"
                " ORDER BY msg_id DESC LIMIT 1",
                account,
                mid,
            )
        )

    async def forget_account(self, account: int) -> None:
        await self.db.execute("DELETE FROM deltachat_message WHERE account=$1", account)
        await self.db.execute("DELETE FROM deltachat_reaction WHERE account=$1", account)

    # --- reactions sent from Matrix -------------------------------------------------------

    async def add_reaction(
        self, account: int, msg_id: int, user_id: str, emoji: str, at: int
    ) -> None:
        await self.db.execute(
            "INSERT INTO deltachat_reaction (account, msg_id, user_id, emoji, at)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            account,
            msg_id,
            user_id,
            emoji,
            at,
        )

    async def remove_reaction(self, account: int, msg_id: int, user_id: str, emoji: str) -> None:
        await self.db.execute(
            "DELETE FROM deltachat_reaction"
            " WHERE account=$1 AND msg_id=$2 AND user_id=$3 AND emoji=$4",
            account,
            msg_id,
            user_id,
            emoji,
        )

    async def reactions(self, account: int, msg_id: int) -> list[tuple[str, str]]:
        """(Matrix user, emoji) of the reactions sent through an account to a message, the
        latest last."""
        rows = await self.db.fetch(
            "SELECT user_id, emoji FROM deltachat_reaction WHERE account=$1 AND msg_id=$2"
            " ORDER BY at, user_id, emoji",
            account,
            msg_id,
        )
        return [(str(r["user_id"]), str(r["emoji"])) for r in rows]

    # --- groups and DM owners --------------------------------------------------------------

    async def add_group(self, handle: str, grpid: str) -> str:
        """Map a portal handle to a group; an already mapped group keeps its handle."""
        existing = self.handle_of.get(grpid)
        if existing is not None:
            return existing
        await self.db.execute(
            "INSERT INTO deltachat_group (handle, grpid) VALUES ($1, $2)", handle, grpid
        )
        self.handle_of[grpid] = handle
        self.grpid_of[handle] = grpid
        return handle

    async def remove_group(self, handle: str) -> None:
        grpid = self.grpid_of.pop(handle, None)
        if grpid is not None:
            self.handle_of.pop(grpid, None)
        await self.db.execute("DELETE FROM deltachat_group WHERE handle=$1", handle)

    async def dm_owner(self, contact: str) -> str | None:
        row = await self.db.fetchrow(
            "SELECT user_id FROM deltachat_dm_owner WHERE contact=$1", contact
        )
        return str(row["user_id"]) if row else None

    async def set_dm_owner(self, contact: str, user_id: str) -> None:
        await self.db.execute(
            "INSERT INTO deltachat_dm_owner (contact, user_id) VALUES ($1, $2)"
            " ON CONFLICT (contact) DO UPDATE SET user_id=excluded.user_id",
            contact,
            user_id,
        )
