"""Appservice transactions: which ones were received, and the events not processed yet.

A transaction is acknowledged only after its events are committed here, and an event leaves
``pending_event`` only after it was handled, so a crash at any point loses nothing.

A homeserver may deliver one event again in another transaction (after a timeout, say):
``received_event`` keeps the ids of the events recorded lately, so each is handled once.

An appservice transaction is recorded in one database transaction, with the deletions of the
events handled since the last one (:meth:`TransactionStore.handled`): one commit per
transaction instead of one per event and statement. A handled event whose deletion was not
committed yet when the bridge crashed (at most half a second, ``_DONE_DELAY_S``, without
traffic) is replayed at the next start, as one handled but not marked done always was: a
message is recognised as bridged by its id mapping (``replayed_events``), a redaction finds
nothing left to redact. The id mappings written behind (``rider``: remote messages' rows of
the last moment) ride the same trip."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mautrix.util.async_db import Database

from .messages import Batch
from .one_trip import in_sqlite_thread, is_sqlite, placeholders, sqlite_query

Statement = tuple[str, Any]

# How long an event id is remembered: homeservers retry for hours, not weeks.
EVENT_MEMORY_MS = 7 * 24 * 3600 * 1000
# How often the ids older than that are forgotten, while transactions come in.
_PRUNE_EVERY_MS = 3600 * 1000
# How long the deletion of a handled event waits for the next transaction to go with.
_DONE_DELAY_S = 0.5
# Deleted with one statement at most (SQLite allows 32766 parameters).
_DONE_CHUNK = 500

_NEW_TXN = (
    "INSERT INTO appservice_txn (txn_id, received_at) VALUES ($1, $2)"
    " ON CONFLICT (txn_id) DO NOTHING RETURNING txn_id"
)
_NEW_EVENT = (
    "INSERT INTO received_event (event_id, received_at) VALUES ($1, $2)"
    " ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)
_PENDING = "INSERT INTO pending_event (txn_id, room_id, event) VALUES ($1, $2, $3) RETURNING seq"


@dataclass(slots=True)
class PendingEvent:
    seq: int
    room_id: str
    event: dict[str, Any]


def _delete_done(seqs: list[int]) -> list[tuple[str, list[int]]]:
    """The statements deleting ``seqs`` from the pending events."""
    out = []
    for i in range(0, len(seqs), _DONE_CHUNK):
        chunk = seqs[i : i + _DONE_CHUNK]
        out.append(
            (f"DELETE FROM pending_event WHERE seq IN ({placeholders(1, len(chunk))})", chunk)
        )
    return out


class TransactionStore:
    def __init__(
        self,
        db: Database,
        log: logging.Logger | None = None,
        rider: Callable[[], Batch | None] | None = None,
    ) -> None:
        self.db = db
        self.log = log or logging.getLogger("mimi.db")
        self.rider = rider  # statements written behind elsewhere, for this store's trips
        self._pruned_at = 0
        # Handled events whose deletion waits for the next transaction (or the delay).
        self._done: list[int] = []
        self._flush: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None

    async def record(self, txn_id: str, events: list[dict[str, Any]]) -> list[PendingEvent] | None:
        """Store a transaction and its events atomically. None if it was seen before: its id
        known and none of its events new."""
        now = int(time.time() * 1000)
        if now - self._pruned_at > _PRUNE_EVERY_MS:
            self._pruned_at = now
            await self.prune(EVENT_MEMORY_MS)
        rows = [
            (evt.get("event_id"), str(evt.get("room_id", "")), json.dumps(evt), evt)
            for evt in events
        ]
        done, self._done = self._done, []
        batch = self.rider() if self.rider is not None else None
        first: list[Statement] = [*(batch.statements if batch else []), *_delete_done(done)]
        try:
            if is_sqlite(self.db):
                seen, out = await in_sqlite_thread(
                    self.db, lambda c: self._record_sqlite(c, txn_id, now, rows, first)
                )
            else:
                seen, out = await self._record_pg(txn_id, now, rows, first)
        except BaseException:
            self._done[:0] = done  # deleted with a later one
            if batch:
                batch.settle(False)
            raise
        if batch:
            batch.settle(True)
        if not seen:
            return out
        if not out:
            return None  # a replay: every event came before
        # The id is known, the events are not: the homeserver's transaction counter started
        # again (its database or the registration was replaced). Dropping them would lose
        # messages; the event ids keep true replays out.
        self.log.warning(
            "transaction %s reused by the homeserver with %d new events: handled as new",
            txn_id,
            len(out),
        )
        return out

    @staticmethod
    def _record_sqlite(
        c: sqlite3.Connection, txn_id: str, now: int, rows: list[Any], first: list[Statement]
    ) -> tuple[bool, list[PendingEvent]]:
        for query, args in first:
            c.execute(sqlite_query(query), args)
        seen = c.execute(sqlite_query(_NEW_TXN), (txn_id, now)).fetchone() is None
        out = []
        for event_id, room_id, raw, evt in rows:
            if isinstance(event_id, str) and event_id:
                if c.execute(sqlite_query(_NEW_EVENT), (event_id, now)).fetchone() is None:
                    continue  # came in an earlier transaction: pending or handled there
            elif seen:
                continue  # no id to tell it by: a replay's
            seq = c.execute(sqlite_query(_PENDING), (txn_id, room_id, raw)).fetchone()[0]
            out.append(PendingEvent(int(seq), room_id, evt))
        return seen, out

    async def _record_pg(
        self, txn_id: str, now: int, rows: list[Any], first: list[Statement]
    ) -> tuple[bool, list[PendingEvent]]:
        conn: Any
        async with self.db.acquire() as conn, conn.transaction():
            for query, args in first:
                await conn.execute(query, *args)
            seen = await conn.fetchval(_NEW_TXN, txn_id, now) is None
            out = []
            for event_id, room_id, raw, evt in rows:
                if isinstance(event_id, str) and event_id:
                    if await conn.fetchval(_NEW_EVENT, event_id, now) is None:
                        continue  # came in an earlier transaction: pending or handled there
                elif seen:
                    continue  # no id to tell it by: a replay's
                seq = await conn.fetchval(_PENDING, txn_id, room_id, raw)
                out.append(PendingEvent(int(seq), room_id, evt))
            return seen, out

    async def seen(self, txn_id: str) -> bool:
        return bool(await self.db.fetchval("SELECT 1 FROM appservice_txn WHERE txn_id=$1", txn_id))

    async def pending(self) -> list[PendingEvent]:
        rows = await self.db.fetch("SELECT seq, room_id, event FROM pending_event ORDER BY seq")
        return [PendingEvent(r["seq"], r["room_id"], json.loads(r["event"])) for r in rows]

    async def done(self, seq: int) -> None:
        """Delete a handled event now."""
        await self.db.execute("DELETE FROM pending_event WHERE seq=$1", seq)

    def handled(self, seq: int) -> None:
        """Delete a handled event with the next transaction recorded, or in a moment."""
        self._done.append(seq)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(_DONE_DELAY_S, self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush = None
        if self._done and self._flushing is None:
            self._flushing = asyncio.create_task(self._flush_done())

    async def _flush_done(self) -> None:
        try:
            await self.flush()
        except Exception as e:
            # Still pending in the database: deleted later, or replayed and recognised.
            self.log.warning("could not mark handled events done (%s); trying again later", e)
            delay = _DONE_DELAY_S * 10
        else:
            delay = _DONE_DELAY_S
        self._flushing = None
        if self._done and self._flush is None:  # handled meanwhile, or not deleted
            self._flush = asyncio.get_running_loop().call_later(delay, self._flush_soon)

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Delete every handled event not deleted yet, before the database closes; if the
        database does not answer in ``timeout`` seconds they stay (and are recognised when
        replayed at the next start)."""
        if self._flushing is not None:
            self._flushing.cancel()  # its events are put back, and go with this one
            await asyncio.gather(self._flushing, return_exceptions=True)
            self._flushing = None
        await asyncio.wait_for(self.flush(), timeout)

    async def flush(self) -> None:
        """Delete every handled event not deleted yet."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        done, self._done = self._done, []
        if not done:
            return
        batch = self.rider() if self.rider is not None else None
        statements: list[Statement] = [*(batch.statements if batch else []), *_delete_done(done)]
        try:
            if is_sqlite(self.db):

                def delete(c: sqlite3.Connection) -> None:
                    for query, args in statements:
                        c.execute(sqlite_query(query), args)

                await in_sqlite_thread(self.db, delete)
            elif batch:  # the rows and the deletions together
                conn: Any
                async with self.db.acquire() as conn, conn.transaction():
                    for query, args in statements:
                        await conn.execute(query, *args)
            else:  # waits for a restarting server
                for query, args in statements:
                    await self.db.execute(query, *args)
        except BaseException:
            self._done[:0] = done
            if batch:
                batch.settle(False)
            raise
        if batch:
            batch.settle(True)

    async def prune(self, older_than_ms: int) -> None:
        """Forget old transaction and event ids (homeservers retry for hours, not weeks)."""
        cutoff = int(time.time() * 1000) - older_than_ms
        await self.db.execute("DELETE FROM appservice_txn WHERE received_at < $1", cutoff)
        await self.db.execute("DELETE FROM received_event WHERE received_at < $1", cutoff)
