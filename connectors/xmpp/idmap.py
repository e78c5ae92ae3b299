"""Message id bookkeeping (XEP-0359).

A message has up to three XMPP ids: the stanza ``id`` attribute, the sender's ``origin-id``
and, in a MUC with an archive, the room's ``stanza-id``. The id given to the core (the
*canonical* id) is the MUC's stanza-id for MUC messages, else origin-id, else ``id``.
References from XMPP use different ids depending on the feature (XEP-0308 corrections use the
sender's ``id``; XEP-0444, XEP-0424, XEP-0461 and XEP-0333 use the stanza-id in groupchats),
so every id of a message resolves to its record here. Reaction sets (XEP-0444 sends the full
set of one user's reactions) are kept per (conversation, user, message).

Records live in memory (bounded) and, when the core offers a database, in the tables
``xmpp_message`` and ``xmpp_reaction`` so that edits and reactions survive a restart. Writes
go to the database behind the memory (batched, one transaction per batch), so that a message
is never held up by the database on its way to the core; :meth:`IdStore.flush` waits for
them (the connector calls it when it stops).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(slots=True)
class MessageRecord:
    conv: str
    canonical: str
    stanza_id: str | None
    origin_id: str | None
    sender: str  # bare JID, or room@service/nick for semi-anonymous occupants
    body: str | None = None


_INSERT_MESSAGE = (
    "INSERT INTO xmpp_message (conv, xid, canonical, stanza_id, origin_id, sender)"
    " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (conv, xid) DO UPDATE SET"
    " canonical=excluded.canonical, stanza_id=excluded.stanza_id,"
    " origin_id=excluded.origin_id, sender=excluded.sender"
)
_INSERT_REACTIONS = (
    "INSERT INTO xmpp_reaction (conv, sender, target, keys) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (conv, sender, target) DO UPDATE SET keys=excluded.keys"
)


class IdStore:
    def __init__(self, db: Any = None, capacity: int = 50_000) -> None:
        self.db = db
        self.capacity = capacity
        self._by_id: OrderedDict[tuple[str, str], MessageRecord] = OrderedDict()
        self._reactions: OrderedDict[tuple[str, str, str], frozenset[str]] = OrderedDict()
        self._writes: list[tuple[str, tuple[Any, ...]]] = []
        self._writer: asyncio.Task[None] | None = None

    def _write(self, query: str, row: tuple[Any, ...]) -> None:
        self._writes.append((query, row))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_batches(), name="xmpp-id-writer")

    async def _write_batches(self) -> None:
        while self._writes:
            batch, self._writes = self._writes, []
            by_query: dict[str, list[tuple[Any, ...]]] = {}
            for query, row in batch:
                by_query.setdefault(query, []).append(row)
            try:
                async with self.db.acquire() as conn, conn.transaction():
                    for query, rows in by_query.items():
                        await conn.executemany(query, rows)
            except Exception as e:
                log.warning("id store: could not persist %d ids: %s", len(batch), e)

    async def flush(self) -> None:
        """Wait until every id recorded so far is in the database."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    async def setup(self) -> None:
        if self.db is None:
            return
        try:
            await self.db.fetchval("SELECT 1 FROM xmpp_message LIMIT 1")
        except Exception as e:
            log.warning("id store: no database tables (%s); ids are kept in memory only", e)
            self.db = None

    def _remember(self, key: tuple[str, str], rec: MessageRecord) -> None:
        self._by_id[key] = rec
        self._by_id.move_to_end(key)
        while len(self._by_id) > self.capacity:
            self._by_id.popitem(last=False)

    async def add(self, rec: MessageRecord, *aliases: str) -> None:
        """Record a message under all its ids (and ``aliases``, e.g. an ``id`` attribute that
        differs from the origin-id)."""
        ids = {i for i in (rec.canonical, rec.stanza_id, rec.origin_id, *aliases) if i}
        for xid in ids:
            self._remember((rec.conv, xid), rec)
        if self.db is None:
            return
        for xid in sorted(ids):
            self._write(
                _INSERT_MESSAGE,
                (rec.conv, xid, rec.canonical, rec.stanza_id, rec.origin_id, rec.sender),
            )

    async def get(self, conv: str, xid: str) -> MessageRecord | None:
        rec = self._by_id.get((conv, xid))
        if rec is not None or self.db is None:
            return rec
        try:
            row = await self.db.fetchrow(
                "SELECT canonical, stanza_id, origin_id, sender FROM xmpp_message"
                " WHERE conv=$1 AND xid=$2",
                conv,
                xid,
            )
        except Exception as e:
            log.warning("id store: lookup failed: %s", e)
            return None
        if row is None:
            return None
        rec = MessageRecord(conv, row[0], row[1], row[2], row[3])
        self._remember((conv, xid), rec)
        return rec

    async def canonical(self, conv: str, xid: str) -> str:
        rec = await self.get(conv, xid)
        return rec.canonical if rec else xid

    async def reactions(self, conv: str, sender: str, target: str) -> frozenset[str]:
        key = (conv, sender, target)
        if key in self._reactions:
            return self._reactions[key]
        if self.db is not None:
            try:
                row = await self.db.fetchrow(
                    "SELECT keys FROM xmpp_reaction WHERE conv=$1 AND sender=$2 AND target=$3",
                    conv,
                    sender,
                    target,
                )
                if row is not None:
                    keys = frozenset(json.loads(row[0]))
                    self._reactions[key] = keys
                    return keys
            except Exception as e:
                log.warning("id store: reaction lookup failed: %s", e)
        return frozenset()

    async def set_reactions(
        self, conv: str, sender: str, target: str, keys: frozenset[str]
    ) -> None:
        key = (conv, sender, target)
        self._reactions[key] = keys
        self._reactions.move_to_end(key)
        while len(self._reactions) > self.capacity:
            self._reactions.popitem(last=False)
        if self.db is None:
            return
        self._write(_INSERT_REACTIONS, (conv, sender, target, json.dumps(sorted(keys))))
