"""The bridge's own encryption tables, beside mautrix's ``crypto_*`` tables in the same
database: the sealed pickle key of the bot's Olm account and recovery key of its
cross-signing keys, and which rooms are encrypted."""

from __future__ import annotations

import json
import secrets
from typing import Any

from mautrix.util.async_db import Connection, Database, Scheme, UpgradeTable

from ..credentials import CredentialBox

upgrade_table = UpgradeTable(
    version_table_name="mimi_crypto_version", database_name="mimi-bridge crypto"
)


@upgrade_table.register(description="Pickle key and room encryption state")  # type: ignore[call-arg,arg-type]
async def upgrade_v1(conn: Connection, scheme: Scheme) -> None:
    await conn.execute(
        """CREATE TABLE mimi_crypto_secret (
            name   TEXT PRIMARY KEY,
            value  TEXT NOT NULL
        )"""
    )
    await conn.execute(
        """CREATE TABLE mimi_room_encryption (
            room_id  TEXT PRIMARY KEY,
            content  TEXT NOT NULL
        )"""
    )


@upgrade_table.register(description="Events waiting for their room keys")  # type: ignore[call-arg,arg-type]
async def upgrade_v2(conn: Connection, scheme: Scheme) -> None:
    await conn.execute(
        """CREATE TABLE mimi_crypto_waiting (
            event_id  TEXT PRIMARY KEY,
            event     TEXT NOT NULL
        )"""
    )


class WaitingEvents:
    """Encrypted events whose room key has not arrived: kept until handled, so that a
    restart while they wait handles them again."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def keep(self, event_id: str, event: dict[str, Any]) -> None:
        await self.db.execute(
            "INSERT INTO mimi_crypto_waiting (event_id, event) VALUES ($1, $2)"
            " ON CONFLICT (event_id) DO NOTHING",
            event_id,
            json.dumps(event),
        )

    async def done(self, event_id: str) -> None:
        await self.db.execute("DELETE FROM mimi_crypto_waiting WHERE event_id=$1", event_id)

    async def all(self) -> list[dict[str, Any]]:
        rows = await self.db.fetch("SELECT event FROM mimi_crypto_waiting")
        return [json.loads(r["event"]) for r in rows]


class CryptoSecrets:
    """Secrets of the bot's device, stored sealed with ``bridge.credentials_key`` like login
    credentials: the key that pickles (encrypts at rest) the Olm account and sessions, and
    the recovery key of the bot's cross-signing keys."""

    def __init__(self, db: Database, box: CredentialBox) -> None:
        self.db = db
        self.box = box

    async def get(self, name: str) -> str | None:
        """The secret, or None if there is none; CredentialError if the key changed."""
        sealed = await self.db.fetchval("SELECT value FROM mimi_crypto_secret WHERE name=$1", name)
        return str(self.box.open(sealed)["key"]) if isinstance(sealed, str) else None

    async def put(self, name: str, value: str) -> None:
        await self.db.execute(
            "INSERT INTO mimi_crypto_secret (name, value) VALUES ($1, $2)"
            " ON CONFLICT (name) DO UPDATE SET value=excluded.value",
            name,
            self.box.seal({"key": value}),
        )

    async def pickle_key(self) -> str:
        key = await self.get("pickle_key")
        if key is None:
            key = secrets.token_urlsafe(32)
            await self.put("pickle_key", key)
        return key

    async def recovery_key(self) -> str | None:
        return await self.get("recovery_key")

    async def put_recovery_key(self, key: str) -> None:
        await self.put("recovery_key", key)


class RoomEncryptionStore:
    """``m.room.encryption`` contents of the rooms known to be encrypted. Encryption cannot be
    turned off in a room, so an entry is never removed; rooms found unencrypted are only
    remembered in memory (the state event would reach the bridge in a transaction)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._encrypted: dict[str, dict[str, Any]] = {}
        self._plain: set[str] = set()
        self._loaded = False

    async def load(self) -> None:
        rows = await self.db.fetch("SELECT room_id, content FROM mimi_room_encryption")
        for row in rows:
            self._encrypted[row["room_id"]] = json.loads(row["content"])
        self._loaded = True

    def known(self, room_id: str) -> bool | None:
        if room_id in self._encrypted:
            return True
        return False if room_id in self._plain else None

    def content(self, room_id: str) -> dict[str, Any] | None:
        return self._encrypted.get(room_id)

    def rooms(self) -> list[str]:
        return list(self._encrypted)

    def mark_plain(self, room_id: str) -> None:
        self._plain.add(room_id)

    async def mark_encrypted(self, room_id: str, content: dict[str, Any]) -> None:
        if self._encrypted.get(room_id) == content:
            return
        self._encrypted[room_id] = content
        self._plain.discard(room_id)
        await self.db.execute(
            "INSERT INTO mimi_room_encryption (room_id, content) VALUES ($1, $2)"
            " ON CONFLICT (room_id) DO UPDATE SET content=excluded.content",
            room_id,
            json.dumps(content),
        )
