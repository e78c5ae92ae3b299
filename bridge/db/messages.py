"""The message and reaction id mapping: which Matrix event is which remote message.

A remote message's row, once it is in Matrix, is written behind
(:meth:`MessageStore.insert_later`): lookups find it at once, and it is stored within
:data:`BEHIND_S` with the others of that moment in one trip, or in the trip of the next
appservice transaction. A Matrix message's row is
stored before its event counts as handled (a transaction replayed after a crash must find it
bridged), together with the rows written behind meanwhile."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
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


#: How long a row written behind waits for a trip to ride along with.
BEHIND_S = 0.05
_RETRY_S = 2.0


@dataclass(slots=True)
class Batch:
    """Statements for another store's trip (``$n`` style), and what to call once its
    transaction committed (``True``) or failed (``False``)."""

    statements: list[tuple[str, tuple[Any, ...]]]
    settle: Callable[[bool], None]


class MessageStore:
    def __init__(self, db: Database, log: logging.Logger | None = None) -> None:
        self.db = db
        self.log = log or logging.getLogger("mimi.db")
        self._queued: list[MessageRow] = []  # written behind, not in a trip yet
        self._unwritten: dict[str, MessageRow] = {}  # event id -> row not committed yet
        self._trips = 0  # trips under way carrying rows
        self._settled = asyncio.Event()
        self._settled.set()
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task[None]] = set()
        self._progress = asyncio.Event()  # set at each trip that stored rows

    # --- written behind ---

    def insert_later(self, rows: list[MessageRow]) -> None:
        """Store rows within :data:`BEHIND_S` (lookups find them meanwhile)."""
        for m in rows:
            self._queued.append(m)
            self._unwritten[m.event_id] = m
        self._arm(BEHIND_S)

    def _arm(self, delay: float) -> None:
        if self._timer is None and self._queued:
            self._timer = asyncio.get_running_loop().call_later(delay, self._flush_soon)

    def _flush_soon(self) -> None:
        self._timer = None
        task = asyncio.create_task(self._flush_logged())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _flush_logged(self) -> None:
        try:
            await self.flush()
        except Exception as e:  # kept in memory and tried again
            self.log.warning(
                "storing %d message mappings failed (%s); retrying", len(self._queued), e
            )

    def take(self) -> Batch | None:
        """The queued rows as statements for a trip of another store, or None."""
        rows, self._queued = self._queued, []
        if not rows:
            return None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._trips += 1
        self._settled.clear()
        return Batch([(_INSERT, _values(m)) for m in rows], lambda ok: self._settle(rows, ok))

    def _settle(self, rows: list[MessageRow], ok: bool) -> None:
        self._trips -= 1
        if ok:
            for m in rows:
                self._unwritten.pop(m.event_id, None)
            self._progress.set()
            self._progress = asyncio.Event()
        else:
            self._queued[:0] = rows
            self._arm(_RETRY_S)
        if not self._trips:
            self._settled.set()

    async def flush(self) -> None:
        """Store every row written behind now."""
        batch = self.take()
        if batch is not None:
            ok = False
            try:
                await self._run(batch.statements)
                ok = True
            finally:
                batch.settle(ok)
        await self._settled.wait()  # and rows other trips carry

    async def _run(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        if is_sqlite(self.db):

            def insert(c: sqlite3.Connection) -> None:
                for query, args in statements:
                    c.execute(sqlite_query(query), args)

            await in_sqlite_thread(self.db, insert)
        else:  # atomic on its own, and waits for a restarting server (no transaction)
            await self.db.executemany(_INSERT, [args for _, args in statements])

    async def stored(self) -> None:
        """Once every row written behind so far is in the database (not hastening it)."""
        waiting = list(self._unwritten.values())
        while any(self._unwritten.get(m.event_id) is m for m in waiting):
            await self._progress.wait()

    async def _written(self, event_id: str | None = None) -> None:
        """Before a change of rows: the row of ``event_id`` (every row, for None) is stored."""
        while (event_id in self._unwritten) if event_id is not None else self._unwritten:
            await self.flush()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.flush()

    # --- rows ---

    async def insert(self, m: MessageRow) -> None:
        await self.insert_many([m])

    async def insert_many(self, rows: list[MessageRow]) -> None:
        """Store rows now, in one transaction with those written behind meanwhile."""
        self.insert_later(rows)
        await self.flush()

    async def by_event(self, event_id: str) -> MessageRow | None:
        if (unwritten := self._unwritten.get(event_id)) is not None:
            return unwritten
        row = await self.db.fetchrow(f"SELECT {_MSG_COLS} FROM message WHERE event_id=$1", event_id)
        return MessageRow.from_row(row) if row else None

    async def by_remote(self, portal: PortalKey, remote_id: str) -> list[MessageRow]:
        # Asked for every bridged remote message (is it already bridged?): on SQLite in one
        # trip to its thread rather than the driver's several.
        if self._unwritten:  # a few rows of the last moment: scanned
            found = [
                m
                for m in self._unwritten.values()
                if m.remote_id == remote_id and m.portal == portal
            ]
            if found:
                return sorted(found, key=lambda m: m.part)
        args = (portal.network, portal.remote_id, portal.receiver, remote_id)
        if is_sqlite(self.db):

            def select(c: sqlite3.Connection) -> list[Any]:
                return c.execute(sqlite_query(_BY_REMOTE), args).fetchall()

            rows = await in_sqlite_thread(self.db, select)
        else:
            rows = await self.db.fetch(_BY_REMOTE, *args)
        return [MessageRow.from_row(r) for r in rows]

    async def record_edit(self, m: MessageRow, body: str | None) -> None:
        await self._written(m.event_id)
        await self.db.execute(
            "UPDATE message SET edit_count=edit_count+1, body=$2 WHERE event_id=$1",
            m.event_id,
            body,
        )

    async def delete(self, m: MessageRow) -> None:
        await self._written(m.event_id)
        await self.db.execute("DELETE FROM message WHERE event_id=$1", m.event_id)

    async def count(self, room_id: str) -> int:
        await self._written()
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
