"""The core's tables and their migrations (component ``core`` in ``schema_versions``).
Connectors declare their own tables the same way (``NetworkConnector.migrations``)."""

from __future__ import annotations

import json
import time
from typing import Any

from ..connector.tables import table_exists
from .migrations import Component


async def _v1_initial(conn: Any, dialect: str) -> None:
    serial = "INTEGER PRIMARY KEY" if dialect == "sqlite" else "BIGSERIAL PRIMARY KEY"
    await conn.execute(
        """CREATE TABLE portal (
            network     TEXT NOT NULL,
            remote_id   TEXT NOT NULL,
            receiver    TEXT NOT NULL DEFAULT '',
            room_id     TEXT UNIQUE,
            name        TEXT,
            topic       TEXT,
            avatar_mxc  TEXT,
            is_direct   BOOLEAN NOT NULL DEFAULT false,
            plumbed     BOOLEAN NOT NULL DEFAULT false,
            relay       BOOLEAN NOT NULL DEFAULT true,
            metadata    TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (network, remote_id, receiver)
        )"""
    )
    await conn.execute(
        """CREATE TABLE ghost (
            network       TEXT NOT NULL,
            remote_id     TEXT NOT NULL,
            user_id       TEXT NOT NULL UNIQUE,
            display_name  TEXT,
            avatar_mxc    TEXT,
            metadata      TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (network, remote_id)
        )"""
    )
    await conn.execute(
        """CREATE TABLE matrix_user (
            user_id          TEXT PRIMARY KEY,
            management_room  TEXT,
            permission       TEXT
        )"""
    )
    await conn.execute(
        """CREATE TABLE user_login (
            network      TEXT NOT NULL,
            login_id     TEXT NOT NULL,
            user_id      TEXT NOT NULL,
            credentials  TEXT NOT NULL,
            remote_name  TEXT NOT NULL DEFAULT '',
            state        TEXT NOT NULL DEFAULT 'ok',
            metadata     TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (network, login_id)
        )"""
    )
    await conn.execute("CREATE INDEX user_login_user_idx ON user_login (user_id)")
    await conn.execute(
        """CREATE TABLE message (
            network          TEXT NOT NULL,
            portal_id        TEXT NOT NULL,
            portal_receiver  TEXT NOT NULL DEFAULT '',
            remote_id        TEXT NOT NULL,
            part             INTEGER NOT NULL DEFAULT 0,
            room_id          TEXT NOT NULL,
            event_id         TEXT NOT NULL UNIQUE,
            sender_id        TEXT NOT NULL,
            sender_mxid      TEXT NOT NULL,
            timestamp        BIGINT NOT NULL,
            reply_to         TEXT,
            thread_root      TEXT,
            body             TEXT,
            edit_count       INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (network, portal_id, portal_receiver, remote_id, part)
        )"""
    )
    await conn.execute("CREATE INDEX message_room_idx ON message (room_id, timestamp)")
    await conn.execute(
        """CREATE TABLE reaction (
            network          TEXT NOT NULL,
            portal_id        TEXT NOT NULL,
            portal_receiver  TEXT NOT NULL DEFAULT '',
            target_id        TEXT NOT NULL,
            sender_id        TEXT NOT NULL,
            key              TEXT NOT NULL,
            room_id          TEXT NOT NULL,
            event_id         TEXT NOT NULL UNIQUE,
            remote_id        TEXT,
            PRIMARY KEY (network, portal_id, portal_receiver, target_id, sender_id, key)
        )"""
    )
    await conn.execute(
        """CREATE TABLE appservice_txn (
            txn_id       TEXT PRIMARY KEY,
            received_at  BIGINT NOT NULL
        )"""
    )
    await conn.execute(
        f"""CREATE TABLE pending_event (
            seq      {serial},
            txn_id   TEXT NOT NULL,
            room_id  TEXT NOT NULL,
            event    TEXT NOT NULL
        )"""
    )


async def _v2_received_events(conn: Any, dialect: str) -> None:
    """The ids of the events recorded lately, so that an event delivered again in another
    transaction is handled once. The events still pending are its first rows."""
    await conn.execute(
        """CREATE TABLE received_event (
            event_id     TEXT PRIMARY KEY,
            received_at  BIGINT NOT NULL
        )"""
    )
    now = int(time.time() * 1000)
    for row in await conn.fetch("SELECT event FROM pending_event"):
        try:
            event_id = json.loads(row["event"]).get("event_id")
        except (ValueError, AttributeError):
            continue  # not an event object: nothing to remember it by
        if isinstance(event_id, str) and event_id:
            await conn.execute(
                "INSERT INTO received_event (event_id, received_at) VALUES ($1, $2)"
                " ON CONFLICT (event_id) DO NOTHING",
                event_id,
                now,
            )


async def _legacy_version(conn: Any, dialect: str) -> int:
    """Releases before ``schema_versions`` kept the core's version in ``mimi_version`` (a
    single row); that table is left as it is."""
    if not await table_exists(conn, dialect, "mimi_version"):
        return 0
    return int(await conn.fetchval("SELECT max(version) FROM mimi_version") or 0)


CORE = Component("core", [_v1_initial, _v2_received_events], legacy_version=_legacy_version)
