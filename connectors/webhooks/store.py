"""The connector's own tables, in the bridge's database.

* ``webhooks_hook``: each hook, the portal (``room``) it speaks in, the SHA-256 of its token
  (the token itself is shown once and never stored), and its optional outgoing URL with the
  secret that signs what is sent there.
* ``webhooks_alert_group``: the message of each Alertmanager group and whether it shows the
  group resolved, so that the group's later notifications edit it instead of posting again
  (a firing after the resolution is a new message).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS webhooks_hook (
        id TEXT PRIMARY KEY, room TEXT NOT NULL, name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE, created_by TEXT NOT NULL,
        outgoing_url TEXT, outgoing_secret TEXT, UNIQUE (room, name))""",
    """CREATE TABLE IF NOT EXISTS webhooks_alert_group (
        hook_id TEXT NOT NULL, group_key TEXT NOT NULL, message_id TEXT NOT NULL,
        resolved BOOLEAN NOT NULL DEFAULT false, PRIMARY KEY (hook_id, group_key))""",
]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(slots=True)
class Hook:
    id: str
    room: str
    name: str
    token_hash: str
    created_by: str
    outgoing_url: str | None = None
    outgoing_secret: str | None = None


_COLUMNS = "id, room, name, token_hash, created_by, outgoing_url, outgoing_secret"


def _hook(row: Any) -> Hook:
    return Hook(
        row["id"],
        row["room"],
        row["name"],
        row["token_hash"],
        row["created_by"],
        row["outgoing_url"],
        row["outgoing_secret"],
    )


class Store:
    def __init__(self) -> None:
        self.db: Any = None

    async def setup(self, db: Any) -> None:
        self.db = db
        for q in _SCHEMA:
            await self.db.execute(q)

    async def add(self, hook: Hook) -> None:
        await self.db.execute(
            f"INSERT INTO webhooks_hook ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            hook.id,
            hook.room,
            hook.name,
            hook.token_hash,
            hook.created_by,
            hook.outgoing_url,
            hook.outgoing_secret,
        )

    async def by_token(self, token: str) -> Hook | None:
        row = await self.db.fetchrow(
            f"SELECT {_COLUMNS} FROM webhooks_hook WHERE token_hash=$1", token_hash(token)
        )
        return _hook(row) if row else None

    async def by_id(self, hook_id: str) -> Hook | None:
        row = await self.db.fetchrow(f"SELECT {_COLUMNS} FROM webhooks_hook WHERE id=$1", hook_id)
        return _hook(row) if row else None

    async def by_name(self, room: str, name: str) -> Hook | None:
        row = await self.db.fetchrow(
            f"SELECT {_COLUMNS} FROM webhooks_hook WHERE room=$1 AND name=$2", room, name
        )
        return _hook(row) if row else None

    async def in_room(self, room: str) -> list[Hook]:
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS} FROM webhooks_hook WHERE room=$1 ORDER BY name", room
        )
        return [_hook(r) for r in rows]

    async def set_token(self, hook_id: str, token: str) -> None:
        await self.db.execute(
            "UPDATE webhooks_hook SET token_hash=$2 WHERE id=$1", hook_id, token_hash(token)
        )

    async def set_outgoing(self, hook_id: str, url: str | None, secret: str | None) -> None:
        await self.db.execute(
            "UPDATE webhooks_hook SET outgoing_url=$2, outgoing_secret=$3 WHERE id=$1",
            hook_id,
            url,
            secret,
        )

    async def delete(self, hook_id: str) -> None:
        await self.db.execute("DELETE FROM webhooks_alert_group WHERE hook_id=$1", hook_id)
        await self.db.execute("DELETE FROM webhooks_hook WHERE id=$1", hook_id)

    # --- Alertmanager groups ----------------------------------------------------------------

    async def alert_message(self, hook_id: str, group_key: str) -> tuple[str, bool] | None:
        """The group's message id and whether it shows the group resolved."""
        row = await self.db.fetchrow(
            "SELECT message_id, resolved FROM webhooks_alert_group"
            " WHERE hook_id=$1 AND group_key=$2",
            hook_id,
            group_key,
        )
        return (str(row["message_id"]), bool(row["resolved"])) if row else None

    async def set_alert_message(
        self, hook_id: str, group_key: str, message_id: str, resolved: bool
    ) -> None:
        await self.db.execute(
            "INSERT INTO webhooks_alert_group (hook_id, group_key, message_id, resolved)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (hook_id, group_key)"
            " DO UPDATE SET message_id=excluded.message_id, resolved=excluded.resolved",
            hook_id,
            group_key,
            message_id,
            resolved,
        )
