"""Ghosts: the Matrix users that stand for remote users."""

from __future__ import annotations

from dataclasses import dataclass, replace

from mautrix.util.async_db import Database


@dataclass(slots=True)
class Ghost:
    network: str
    remote_id: str
    user_id: str
    display_name: str | None = None
    avatar_mxc: str | None = None


class GhostStore:
    """Ghosts; the ones found are kept in memory (every remote message looks its sender up),
    so this store must be the only writer of the table."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: dict[tuple[str, str], Ghost] = {}

    async def get(self, network: str, remote_id: str) -> Ghost | None:
        cached = self._cache.get((network, remote_id))
        if cached is not None:
            return replace(cached)
        row = await self.db.fetchrow(
            "SELECT network, remote_id, user_id, display_name, avatar_mxc FROM ghost"
            " WHERE network=$1 AND remote_id=$2",
            network,
            remote_id,
        )
        if not row:
            return None
        ghost = Ghost(*row)
        self._cache[(network, remote_id)] = replace(ghost)
        return ghost

    async def save(self, g: Ghost) -> None:
        self._cache.pop((g.network, g.remote_id), None)
        await self.db.execute(
            "INSERT INTO ghost (network, remote_id, user_id, display_name, avatar_mxc)"
            " VALUES ($1,$2,$3,$4,$5) ON CONFLICT (network, remote_id) DO UPDATE SET"
            " user_id=excluded.user_id, display_name=excluded.display_name,"
            " avatar_mxc=excluded.avatar_mxc",
            g.network,
            g.remote_id,
            g.user_id,
            g.display_name,
            g.avatar_mxc,
        )
        self._cache[(g.network, g.remote_id)] = replace(g)
