"""Opening the database and running the core's upgrades.

A database that cannot be used stops start-up with :class:`DatabaseUnavailable`: one line
naming ``appservice.database``, the file or server, and why (the CLI exits with status 1)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import asyncpg
from mautrix.util.async_db import Database, UpgradeTable
from yarl import URL

from ..connector import NetworkConnector
from .migrations import Component, MigrationError, upgrade
from .resilient import ResilientPostgresDatabase
from .schema import CORE

KEY = "appservice.database"


class DatabaseUnavailable(Exception):
    """The configured database cannot be opened; the message is one line for the admin."""


def describe(url: str) -> str:
    """The file or the server of a database URL, without its password."""
    u = URL(url)
    if u.scheme.startswith("sqlite"):
        return u.path
    host = u.host or u.query.get("host") or "localhost"
    port = f":{u.port}" if u.explicit_port else ""
    user = f"{u.user}@" if u.user else ""
    return f"{user}{host}{port}/{u.path.strip('/')}"


def _sqlite_problem(path: Path) -> str | None:
    """Why SQLite cannot open or create ``path``, in words more useful than SQLite's "unable to
    open database file". The directory must be writable too: the write-ahead log lives there."""
    parent = path.parent
    if not parent.exists():
        return f"directory {parent} does not exist"
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if path.is_dir():
        return "it is a directory"
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return "permission denied (the file must be readable and writable)"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"permission denied (SQLite must create files in {parent})"
    # Opened once here, closed whatever happens: the database layer leaks a connection (and
    # its thread, which then keeps the process from exiting) when its first query fails.
    try:
        conn = sqlite3.connect(path, timeout=5)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as e:
        return str(e)
    return None


def _cause(e: BaseException) -> str:
    if isinstance(e, asyncpg.PostgresError | sqlite3.Error):
        text = str(e)
    elif isinstance(e, ConnectionRefusedError):
        text = "connection refused (is PostgreSQL running?)"
    elif isinstance(e, TimeoutError):
        text = "timed out connecting"
    elif isinstance(e, OSError):
        text = e.strerror or str(e)
    else:
        text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return " ".join(text.split()) or type(e).__name__


def connector_tables(
    connectors: Iterable[NetworkConnector | type[NetworkConnector]],
) -> list[Component]:
    """The tables of the connectors that declare some, each under its name."""
    return [Component(c.name, c.migrations) for c in connectors if c.migrations]


async def open_database(
    url: str,
    log: logging.Logger | None = None,
    connectors: Iterable[NetworkConnector | type[NetworkConnector]] = (),
) -> Database:
    """Open the database and bring the core's and the given connectors' tables to this
    release's versions."""
    log = log or logging.getLogger("mimi.db")
    target = describe(url)
    sqlite = url.startswith("sqlite")
    if sqlite:
        problem = await asyncio.to_thread(_sqlite_problem, Path(target))
        if problem:
            raise DatabaseUnavailable(f"{KEY}: cannot open {target}: {problem}")
    db: Database
    if sqlite:
        db = Database.create(url, log=log, owner_name="mimi-bridge")
    else:  # waits for the server when it restarts (see resilient)
        db = ResilientPostgresDatabase(
            URL(url),
            db_args={"min_size": 1, "max_size": 10},
            upgrade_table=UpgradeTable(),
            log=log,
            owner_name="mimi-bridge",
        )
    try:
        await db.start()
    except Exception as e:
        with contextlib.suppress(Exception):  # the first error is the one to report
            await db.stop()
        raise DatabaseUnavailable(f"{KEY}: cannot open {target}: {_cause(e)}") from e
    try:
        await upgrade(db, [CORE, *connector_tables(connectors)], log)
    except Exception as e:
        with contextlib.suppress(Exception):
            await db.stop()
        cause = str(e) if isinstance(e, MigrationError) else _cause(e)
        raise DatabaseUnavailable(f"{KEY}: {target}: {cause}") from e
    return db
