"""Several statements in one transaction, in one trip to SQLite's thread.

The SQLite driver runs every statement in a thread of its own: each one is a hand-over to that
thread and back, which costs more CPU than the statement itself. A unit of work on the hot path
(recording an appservice transaction, say) is written once as a function of a plain
``sqlite3.Connection`` and run there in a single trip; PostgreSQL's driver has no such cost and
runs the same statements on the event loop."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar, cast

from mautrix.util.async_db import Database, Scheme

T = TypeVar("T")

_POSITIONAL = re.compile(r"\$(\d+)")


def is_sqlite(db: Database) -> bool:
    return db.scheme == Scheme.SQLITE


@cache
def sqlite_query(query: str) -> str:
    """A ``$1`` query in SQLite's ``?1`` style (converted once per query text)."""
    return _POSITIONAL.sub(r"?\1", query)


def placeholders(first: int, count: int) -> str:
    """``$first, ..., $(first+count-1)``: for ``IN (...)`` lists."""
    return ",".join(f"${i}" for i in range(first, first + count))


async def in_sqlite_thread(db: Database, work: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``work`` in one transaction (committed, or rolled back if it raises) on a pooled
    connection of the SQLite database ``db``, in the driver's thread."""
    conn: Any
    async with db.acquire() as conn:
        driver = conn.wrapped  # aiosqlite's connection: its thread runs ``work``

        def run(c: sqlite3.Connection) -> T:
            if c.in_transaction:  # inside the caller's transaction: part of it
                return work(c)
            c.execute("BEGIN")
            try:
                result = work(c)
            except BaseException:
                c.rollback()
                raise
            c.commit()
            return result

        return cast(T, await driver._execute(run, driver._conn))
