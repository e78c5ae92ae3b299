"""A store over one of the connector's tables: the bridge database when it has the table,
else nothing (the caller keeps the data in memory)."""

from __future__ import annotations

from typing import Any, ClassVar

from bridge.connector import BridgeAPI


class TableStore:
    table: ClassVar[str]

    def __init__(self, bridge: BridgeAPI) -> None:
        self.bridge = bridge
        self.db: Any = None

    async def _db(self) -> Any:
        """The database, once the table answers; None without one (asked once)."""
        if self.db is None:
            try:
                db = self.bridge.database()
                await db.fetchval(f"SELECT 1 FROM {self.table} LIMIT 1")
                self.db = db
            except Exception:
                self.db = False
        return self.db or None
