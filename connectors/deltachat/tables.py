"""The Delta Chat connector's tables in the bridge's database, as migrations (history: a
released migration is never changed; a change to the tables is a new one at the end). What
each table holds is described in :mod:`connectors.deltachat.store`.

Version 1 is the schema of the releases that created these tables themselves: ``IF NOT
EXISTS`` lets it adopt them as they are."""

from __future__ import annotations

from bridge.connector import Migrations

MIGRATIONS: Migrations = [
    # 1: messages, groups, owners of chats with the bridge's address, reactions from Matrix.
    [
        """CREATE TABLE IF NOT EXISTS deltachat_message (
        account INTEGER NOT NULL, msg_id INTEGER NOT NULL, mid TEXT NOT NULL,
        chat_id INTEGER NOT NULL, sender TEXT NOT NULL, body TEXT,
        PRIMARY KEY (account, msg_id))""",
        "CREATE INDEX IF NOT EXISTS deltachat_message_mid ON deltachat_message (account, mid)",
        """CREATE TABLE IF NOT EXISTS deltachat_group (
        handle TEXT PRIMARY KEY, grpid TEXT NOT NULL UNIQUE)""",
        """CREATE TABLE IF NOT EXISTS deltachat_dm_owner (
        contact TEXT PRIMARY KEY, user_id TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS deltachat_reaction (
        account INTEGER NOT NULL, msg_id INTEGER NOT NULL, user_id TEXT NOT NULL,
        emoji TEXT NOT NULL, at BIGINT NOT NULL,
        PRIMARY KEY (account, msg_id, user_id, emoji))""",
    ],
]
