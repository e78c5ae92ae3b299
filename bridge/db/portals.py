"""Portals: a remote conversation and the Matrix room that shows it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from mautrix.util.async_db import Database

from ..connector import PortalKey
from ._types import Record

_COLUMNS = (
    "network, remote_id, receiver, room_id, name, topic, avatar_mxc, is_direct, plumbed, relay,"
    " metadata"
)


@dataclass(slots=True)
class Portal:
    key: PortalKey
    room_id: str | None = None
    name: str | None = None
    topic: str | None = None
    avatar_mxc: str | None = None
    is_direct: bool = False
    plumbed: bool = False
    relay: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Record) -> Portal:
        return cls(
            key=PortalKey(row["network"], row["remote_id"], row["receiver"]),
            room_id=row["room_id"],
            name=row["name"],
            topic=row["topic"],
            avatar_mxc=row["avatar_mxc"],
            is_direct=bool(row["is_direct"]),
            plumbed=bool(row["plumbed"]),
            relay=bool(row["relay"]),
            metadata=json.loads(row["metadata"] or "{}"),
        )


def _copy(p: Portal) -> Portal:
    return replace(p, metadata=dict(p.metadata))


class PortalStore:
    """Portals; the ones found are kept in memory (every bridged event looks its portal up),
    so this store must be the only writer of the table."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: dict[PortalKey, Portal] = {}
        self._rooms: dict[str, PortalKey] = {}

    def _remember(self, p: Portal) -> Portal:
        self._forget(p.key)
        self._cache[p.key] = _copy(p)
        if p.room_id:
            self._rooms[p.room_id] = p.key
        return p

    def _forget(self, key: PortalKey) -> None:
        old = self._cache.pop(key, None)
        if old is not None and old.room_id and self._rooms.get(old.room_id) == key:
            del self._rooms[old.room_id]

    def known_network(self, room_id: str) -> str | None:
        """The network of a room's portal if it is in memory (for metrics: no query)."""
        key = self._rooms.get(room_id)
        return key.network if key is not None else None

    async def get(self, key: PortalKey) -> Portal | None:
        cached = self._cache.get(key)
        if cached is not None:
            return _copy(cached)
        row = await self.db.fetchrow(
            f"SELECT {_COLUMNS} FROM portal WHERE network=$1 AND remote_id=$2 AND receiver=$3",
            key.network,
            key.remote_id,
            key.receiver,
        )
        return self._remember(Portal.from_row(row)) if row else None

    async def by_room(self, room_id: str) -> Portal | None:
        key = self._rooms.get(room_id)
        if key is not None and key in self._cache:
            return _copy(self._cache[key])
        row = await self.db.fetchrow(f"SELECT {_COLUMNS} FROM portal WHERE room_id=$1", room_id)
        return self._remember(Portal.from_row(row)) if row else None

    async def all(self, network: str | None = None) -> list[Portal]:
        if network is None:
            rows = await self.db.fetch(f"SELECT {_COLUMNS} FROM portal")
        else:
            rows = await self.db.fetch(f"SELECT {_COLUMNS} FROM portal WHERE network=$1", network)
        return [Portal.from_row(r) for r in rows]

    async def save(self, p: Portal) -> None:
        await self.db.execute(
            f"INSERT INTO portal ({_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11) "
            "ON CONFLICT (network, remote_id, receiver) DO UPDATE SET room_id=excluded.room_id,"
            " name=excluded.name, topic=excluded.topic, avatar_mxc=excluded.avatar_mxc,"
            " is_direct=excluded.is_direct, plumbed=excluded.plumbed, relay=excluded.relay,"
            " metadata=excluded.metadata",
            p.key.network,
            p.key.remote_id,
            p.key.receiver,
            p.room_id,
            p.name,
            p.topic,
            p.avatar_mxc,
            p.is_direct,
            p.plumbed,
            p.relay,
            json.dumps(p.metadata),
        )
        self._remember(p)

    async def delete(self, key: PortalKey) -> None:
        self._forget(key)
        await self.db.execute(
            "DELETE FROM portal WHERE network=$1 AND remote_id=$2 AND receiver=$3",
            key.network,
            key.remote_id,
            key.receiver,
        )
