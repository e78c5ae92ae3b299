"""Opening the database and running the core's upgrades."""

from __future__ import annotations

import logging

from mautrix.util.async_db import Database

from .schema import upgrade_table


async def open_database(url: str, log: logging.Logger | None = None) -> Database:
    db = Database.create(
        url,
        upgrade_table=upgrade_table,
        log=log or logging.getLogger("mimi.db"),
        owner_name="mimi-bridge",
        db_args={"min_size": 1, "max_size": 10} if not url.startswith("sqlite") else {},
    )
    await db.start()
    return db
