"""Appservice transactions: which ones were received, and the events not processed yet.

A transaction is acknowledged only after its events are committed here, and an event leaves
``pending_event`` only after it was handled, so a crash at any point loses nothing.

A homeserver may deliver one event again in another transaction (after a timeout, say):
``received_event`` keeps the ids of the events recorded lately, so each is handled once."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from mautrix.util.async_db import Database

# How long an event id is remembered: homeservers retry for hours, not weeks.
EVENT_MEMORY_MS = 7 * 24 * 3600 * 1000
# How often the ids older than that are forgotten, while transactions come in.
_PRUNE_EVERY_MS = 3600 * 1000


@dataclass(slots=True)
class PendingEvent:
    seq: int
    room_id: str
    event: dict[str, Any]


class TransactionStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._pruned_at = 0

    async def record(self, txn_id: str, events: list[dict[str, Any]]) -> list[PendingEvent] | None:
        """Store a transaction and its events atomically. None if it was seen before."""
        conn: Any
        now = int(time.time() * 1000)
        if now - self._pruned_at > _PRUNE_EVERY_MS:
            self._pruned_at = now
            await self.prune(EVENT_MEMORY_MS)
        async with self.db.acquire() as conn, conn.transaction():
            new = await conn.fetchval(
                "INSERT INTO appservice_txn (txn_id, received_at) VALUES ($1, $2)"
                " ON CONFLICT (txn_id) DO NOTHING RETURNING txn_id",
                txn_id,
                now,
            )
            if new is None:
                return None  # seen before
            out = []
            for evt in events:
                event_id = evt.get("event_id")
                if isinstance(event_id, str) and event_id:
                    first = await conn.fetchval(
                        "INSERT INTO received_event (event_id, received_at) VALUES ($1, $2)"
                        " ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                        event_id,
                        now,
                    )
                    if first is None:
                        continue  # came in an earlier transaction: pending or handled there
                seq = await conn.fetchval(
                    "INSERT INTO pending_event (txn_id, room_id, event) VALUES ($1, $2, $3)"
                    " RETURNING seq",
                    txn_id,
                    str(evt.get("room_id", "")),
                    json.dumps(evt),
                )
                out.append(PendingEvent(int(seq), str(evt.get("room_id", "")), evt))
            return out

    async def seen(self, txn_id: str) -> bool:
        return bool(await self.db.fetchval("SELECT 1 FROM appservice_txn WHERE txn_id=$1", txn_id))

    async def pending(self) -> list[PendingEvent]:
        rows = await self.db.fetch("SELECT seq, room_id, event FROM pending_event ORDER BY seq")
        return [PendingEvent(r["seq"], r["room_id"], json.loads(r["event"])) for r in rows]

    async def done(self, seq: int) -> None:
        await self.db.execute("DELETE FROM pending_event WHERE seq=$1", seq)

    async def prune(self, older_than_ms: int) -> None:
        """Forget old transaction and event ids (homeservers retry for hours, not weeks)."""
        cutoff = int(time.time() * 1000) - older_than_ms
        await self.db.execute("DELETE FROM appservice_txn WHERE received_at < $1", cutoff)
        await self.db.execute("DELETE FROM received_event WHERE received_at < $1", cutoff)
