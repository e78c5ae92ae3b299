"""Matrix users of the bridge (management rooms) and their logins on networks."""

from __future__ import annotations

import json
from dataclasses import dataclass

from mautrix.util.async_db import Database

from ._types import Record


@dataclass(slots=True)
class LoginRow:
    network: str
    login_id: str
    user_id: str
    credentials: str  # encrypted
    remote_name: str = ""
    state: str = "ok"
    metadata: str = "{}"

    @classmethod
    def from_row(cls, row: Record) -> LoginRow:
        return cls(**{k: row[k] for k in row.keys()})

    @property
    def meta(self) -> dict[str, object]:
        return dict(json.loads(self.metadata or "{}"))


_LOGIN_COLS = "network, login_id, user_id, credentials, remote_name, state, metadata"


class UserStore:
    """Users and logins. Which room is whose management room is kept in memory (every
    message is checked for a command), so this store must be the only writer of the table."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._owner_of_room: dict[str, str | None] = {}

    async def management_room(self, user_id: str) -> str | None:
        return await self.db.fetchval(
            "SELECT management_room FROM matrix_user WHERE user_id=$1", user_id
        )

    async def set_management_room(self, user_id: str, room_id: str) -> None:
        await self.db.execute(
            "INSERT INTO matrix_user (user_id, management_room) VALUES ($1, $2)"
            " ON CONFLICT (user_id) DO UPDATE SET management_room=excluded.management_room",
            user_id,
            room_id,
        )
        for room, owner in list(self._owner_of_room.items()):
            if owner == user_id:
                del self._owner_of_room[room]
        self._owner_of_room[room_id] = user_id

    async def is_management_room(self, room_id: str) -> str | None:
        if room_id in self._owner_of_room:
            return self._owner_of_room[room_id]
        owner = await self.db.fetchval(
            "SELECT user_id FROM matrix_user WHERE management_room=$1", room_id
        )
        self._owner_of_room[room_id] = owner
        return owner

    async def logins(
        self, *, user_id: str | None = None, network: str | None = None
    ) -> list[LoginRow]:
        q = f"SELECT {_LOGIN_COLS} FROM user_login WHERE 1=1"
        args: list[str] = []
        if user_id is not None:
            args.append(user_id)
            q += f" AND user_id=${len(args)}"
        if network is not None:
            args.append(network)
            q += f" AND network=${len(args)}"
        return [LoginRow.from_row(r) for r in await self.db.fetch(q, *args)]

    async def save_login(self, row: LoginRow) -> None:
        await self.db.execute(
            f"INSERT INTO user_login ({_LOGIN_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7)"
            " ON CONFLICT (network, login_id) DO UPDATE SET user_id=excluded.user_id,"
            " credentials=excluded.credentials, remote_name=excluded.remote_name,"
            " state=excluded.state, metadata=excluded.metadata",
            row.network,
            row.login_id,
            row.user_id,
            row.credentials,
            row.remote_name,
            row.state,
            row.metadata,
        )

    async def delete_login(self, network: str, login_id: str) -> None:
        await self.db.execute(
            "DELETE FROM user_login WHERE network=$1 AND login_id=$2", network, login_id
        )
