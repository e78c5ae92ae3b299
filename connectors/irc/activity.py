"""When each Matrix user last sent a message through a network, kept in the bridge database
(in memory without one) so that the reconnects after a restart go most recent first."""

from __future__ import annotations

import logging

from .table_store import TableStore

log = logging.getLogger("mimi.irc.activity")


class ActivityStore(TableStore):
    table = "irc_puppet_activity"

    async def load(self, netid: str) -> dict[str, float]:
        """User id -> time (seconds since the epoch) of their last message on ``netid``."""
        db = await self._db()
        if db is None:
            return {}
        try:
            rows = await db.fetch(
                "SELECT user_id, last_message FROM irc_puppet_activity WHERE network=$1", netid
            )
        except Exception:
            log.exception("loading puppet activity failed")
            return {}
        return {row["user_id"]: row["last_message"] / 1000 for row in rows}

    async def save(self, netid: str, user_id: str, when: float) -> None:
        db = await self._db()
        if db is None:
            return
        try:
            await db.execute(
                "INSERT INTO irc_puppet_activity (network, user_id, last_message) "
                "VALUES ($1, $2, $3) ON CONFLICT (network, user_id) "
                "DO UPDATE SET last_message=excluded.last_message "
                "WHERE excluded.last_message > irc_puppet_activity.last_message",
                netid,
                user_id,
                int(when * 1000),
            )
        except Exception:
            log.exception("saving puppet activity failed")
