"""The XMPP connector's tables in the bridge's database, as migrations (history: a released
migration is never changed; a change to the tables is a new one at the end).

Version 1 is the schema of the releases that created these tables themselves: ``IF NOT
EXISTS`` lets it adopt them as they are."""

from __future__ import annotations

from bridge.connector import Migrations

MIGRATIONS: Migrations = [
    # 1: message ids and reaction sets (idmap), Matrix users' avatars, the puppets' rosters.
    [
        """CREATE TABLE IF NOT EXISTS xmpp_message (
        conv TEXT NOT NULL, xid TEXT NOT NULL, canonical TEXT NOT NULL,
        stanza_id TEXT, origin_id TEXT, sender TEXT NOT NULL,
        PRIMARY KEY (conv, xid))""",
        """CREATE TABLE IF NOT EXISTS xmpp_reaction (
        conv TEXT NOT NULL, sender TEXT NOT NULL, target TEXT NOT NULL, keys TEXT NOT NULL,
        PRIMARY KEY (conv, sender, target))""",
        """CREATE TABLE IF NOT EXISTS xmpp_avatar (
    user_id TEXT PRIMARY KEY, mimetype TEXT NOT NULL, data TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS xmpp_roster (
    puppet TEXT NOT NULL, contact TEXT NOT NULL, sub_from INTEGER NOT NULL,
    sub_to INTEGER NOT NULL, pending_out INTEGER NOT NULL, asked INTEGER NOT NULL,
    PRIMARY KEY (puppet, contact))""",
    ],
]
