"""Channel seats kept without Matrix membership (``require_matrix_membership: false``): the
portals whose room a Matrix user left while their puppet stayed in the channel, kept in the
bridge database (in memory without one) so that the puppet rejoins them after a restart."""

from __future__ import annotations

import logging

from bridge.connector import BridgeAPI

from .table_store import TableStore

log = logging.getLogger("mimi.irc.seats")


class SeatStore(TableStore):
    table = "irc_kept_seat"

    def __init__(self, bridge: BridgeAPI) -> None:
        super().__init__(bridge)
        # network id -> user id -> portal ids (the channels' ids, as in the portal keys)
        self.kept: dict[str, dict[str, set[str]]] = {}

    def of(self, netid: str, user_id: str) -> set[str]:
        return set(self.kept.get(netid, {}).get(user_id, ()))

    def users(self, netid: str) -> dict[str, set[str]]:
        return {u: set(c) for u, c in self.kept.get(netid, {}).items() if c}

    async def load(self, netid: str) -> None:
        self.kept[netid] = {}
        db = await self._db()
        if db is None:
            return
        try:
            rows = await db.fetch(
                "SELECT user_id, channel FROM irc_kept_seat WHERE network=$1", netid
            )
        except Exception:
            log.exception("loading kept channel seats failed")
            return
        for row in rows:
            self.kept[netid].setdefault(row["user_id"], set()).add(row["channel"])

    async def keep(self, netid: str, user_id: str, channel: str) -> None:
        seats = self.kept.setdefault(netid, {}).setdefault(user_id, set())
        if channel in seats:
            return
        seats.add(channel)
        db = await self._db()
        if db is None:
            return
        try:
            await db.execute(
                "INSERT INTO irc_kept_seat (network, user_id, channel) VALUES ($1, $2, $3) "
                "ON CONFLICT (network, user_id, channel) DO NOTHING",
                netid,
                user_id,
                channel,
            )
        except Exception:
            log.exception("saving a kept channel seat failed")

    async def drop(self, netid: str, user_id: str | None, channel: str | None) -> None:
        """Forget the seats of a user (``channel`` None: all of theirs), of a channel
        (``user_id`` None: everyone's), or of the whole network (both None)."""
        users = self.kept.get(netid, {})
        touched = False
        for uid, seats in list(users.items()):
            if user_id is not None and uid != user_id:
                continue
            before = len(seats)
            if channel is None:
                seats.clear()
            else:
                seats.discard(channel)
            touched = touched or len(seats) != before
            if not seats:
                del users[uid]
        if not touched:
            return
        db = await self._db()
        if db is None:
            return
        where, args = ["network=$1"], [netid]
        for column, value in (("user_id", user_id), ("channel", channel)):
            if value is not None:
                args.append(value)
                where.append(f"{column}=${len(args)}")
        try:
            await db.execute(f"DELETE FROM irc_kept_seat WHERE {' AND '.join(where)}", *args)
        except Exception:
            log.exception("forgetting kept channel seats failed")
