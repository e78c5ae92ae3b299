"""The message and reaction id mapping: which Matrix event is which remote message."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from mautrix.util.async_db import Database

from ..connector import PortalKey
from ._types import Record
from .one_trip import in_sqlite_thread, is_sqlite, sqlite_query

_MSG_COLS = (
    "network, portal_id, portal_receiver, remote_id, part, room_id, event_id, sender_id,"
    " sender_mxid, timestamp, reply_to, thread_root, body, edit_count"
)

_INSERT = (
    f"INSERT INTO message ({_MSG_COLS}) VALUES "
    "($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14) ON CONFLICT DO NOTHING"
)

_BY_REMOTE = (
    f"SELECT {_MSG_COLS} FROM message WHERE network=$1 AND portal_id=$2"
    " AND portal_receiver=$3 AND remote_id=$4 ORDER BY part"
)


@dataclass(slots=True)
class MessageRow:
    portal: PortalKey
    remote_id: str
    part: int
    room_id: str
    event_id: str
    sender_id: str  # remote id of the sender, or the Matrix user id for Matrix senders
    sender_mxid: str
    timestamp: int
    reply_to: str | None = None  # event id
    thread_root: str | None = None  # event id
    body: str | None = None
    edit_count: int = 0

    @classmethod
    def from_row(cls, r: Record) -> MessageRow:
        return cls(
            portal=PortalKey(r["network"], r["portal_id"], r["portal_receiver"]),
            remote_id=r["remote_id"],
            part=r["part"],
            room_id=r["room_id"],
            event_id=r["event_id"],
            sender_id=r["sender_id"],
            sender_mxid=r["sender_mxid"],
            timestamp=r["timestamp"],
            reply_to=r["reply_to"],
            thread_root=r["thread_root"],
            body=r["body"],
            edit_count=r["edit_count"],
        )


def _values(m: MessageRow) -> tuple[Any, ...]:
    return (
        m.portal.network,
        m.portal.remote_id,
        m.portal.receiver,
        m.remote_id,
        m.part,
        m.room_id,
        m.event_id,
        m.sender_id,
        m.sender_mxid,
        m.timestamp,
        m.reply_to,
        m.thread_root,
        m.body,
        m.edit_count,
    )


@dataclass(slots=True)
class ReactionRow:
    portal: PortalKey
    target_id: str
    sender_id: str
    key: str
    room_id: str
    event_id: str
    remote_id: str | None = None


class MessageStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(self, m: MessageRow) -> None:
        values = _values(m)
        if is_sqlite(self.db):  # one trip, the query converted once (every bridged message)
            query = sqlite_query(_INSERT)
            await in_sqlite_thread(self.db, lambda c: c.execute(query, values))
        else:
            await self.db.execute(_INSERT, *values)

    async def insert_many(self, rows: list[MessageRow]) -> None:
        """Insert rows in one transaction (one trip to SQLite's thread)."""
        values = [_values(m) for m in rows]
        if is_sqlite(self.db):

            def insert(c: sqlite3.Connection) -> None:
                c.executemany(sqlite_query(_INSERT), values)

            await in_sqlite_thread(self.db, insert)
        else:  # atomic on its own, and waits for a restarting server (no transaction)
            await self.db.executemany(_INSERT, values)

    async def by_event(self, event_id: str) -> MessageRow | None:
        row = await self.db.fetchrow(f"SELECT {_MSG_COLS} FROM message WHERE event_id=$1", event_id)
        return MessageRow.from_row(row) if row else None

    async def by_remote(self, portal: PortalKey, remote_id: str) -> list[MessageRow]:
        # Asked for every bridged remote message (is it already bridged?): on SQLite in one
        # trip to its thread rather than the driver's several.
        args = (portal.network, portal.remote_id, portal.receiver, remote_id)
        if is_sqlite(self.db):

            def select(c: sqlite3.Connection) -> list[Any]:
                return c.execute(sqlite_query(_BY_REMOTE), args).fetchall()

            rows = await in_sqlite_thread(self.db, select)
        else:
            rows = await self.db.fetch(_BY_REMOTE, *args)
        return [MessageRow.from_row(r) for r in rows]

    async def record_edit(self, m: MessageRow, body: str | None) -> None:
        await self.db.execute(
            "UPDATE message SET edit_count=edit_count+1, body=$2 WHERE event_id=$1",
            m.event_id,
            body,
        )

    async def delete(self, m: MessageRow) -> None:
        await self.db.execute("DELETE FROM message WHERE event_id=$1", m.event_id)

    async def count(self, room_id: str) -> int:
        return int(await self.db.fetchval("SELECT COUNT(*) FROM message WHERE room_id=$1", room_id))

    # --- reactions ---

    async def insert_reaction(self, r: ReactionRow) -> None:
        await self.db.execute(
            "INSERT INTO reaction (network, portal_id, portal_receiver, target_id, sender_id, key,"
            " room_id, event_id, remote_id) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)"
            " ON CONFLICT DO NOTHING",
            r.portal.network,
            r.portal.remote_id,
            r.portal.receiver,
            r.target_id,
            r.sender_id,
            r.key,
            r.room_id,
            r.event_id,
            r.remote_id,
        )

    async def reaction_by_event(self, event_id: str) -> ReactionRow | None:
        r = await self.db.fetchrow(
            "SELECT network, portal_id, portal_receiver, target_id, sender_id, key, room_id,"
            " event_id, remote_id FROM reaction WHERE event_id=$1",
            event_id,
        )
        return self._reaction(r) if r else None

    async def reaction(
        self, portal: PortalKey, target_id: str, sender_id: str, key: str
    ) -> ReactionRow | None:
        r = await self.db.fetchrow(
            "SELECT network, portal_id, portal_receiver, target_id, sender_id, key, room_id,"
            " event_id, remote_id FROM reaction WHERE network=$1 AND portal_id=$2"
            " AND portal_receiver=$3 AND target_id=$4 AND sender_id=$5 AND key=$6",
            portal.network,
            portal.remote_id,
            portal.receiver,
            target_id,
            sender_id,
            key,
        )
        return self._reaction(r) if r else None

    async def delete_reaction(self, event_id: str) -> None:
        await self.db.execute("DELETE FROM reaction WHERE event_id=$1", event_id)

    @staticmethod
    def _reaction(r: Record) -> ReactionRow:
        return ReactionRow(
            portal=PortalKey(r["network"], r["portal_id"], r["portal_receiver"]),
            target_id=r["target_id"],
            sender_id=r["sender_id"],
            key=r["key"],
            room_id=r["room_id"],
            event_id=r["event_id"],
            remote_id=r["remote_id"],
        )
