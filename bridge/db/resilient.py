"""A PostgreSQL database that waits for the server instead of failing.

When PostgreSQL restarts or the network to it drops, a query outside a transaction is tried
again until the server answers (with a growing pause, one warning per outage), so that the
portal queues wait and keep their order, and nothing done on the other side is forgotten (a
message sent to the network whose mapping could not be stored, say). Queries inside a
transaction are not retried: the transaction fails as a whole (appservice transactions are
then answered with an error, and the homeserver sends them again)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
from mautrix.util.async_db.asyncpg import PostgresDatabase
from mautrix.util.async_db.database import conn_var

T = TypeVar("T")

MAX_PAUSE = 10.0


def unavailable(e: BaseException) -> bool:
    """Whether ``e`` says the server cannot be reached now (as opposed to a bad query)."""
    return isinstance(
        e,
        OSError
        | TimeoutError
        | asyncpg.PostgresConnectionError  # class 08: connection exceptions
        | asyncpg.InterfaceError  # "connection is closed", "pool is closing"
        | asyncpg.exceptions.OperatorInterventionError,  # 57P0x: shutting down, starting up
    ) and not isinstance(e, asyncpg.exceptions.QueryCanceledError)


class ResilientPostgresDatabase(PostgresDatabase):
    # The query methods keep mautrix's signatures, ``timeout`` included.
    _outage = False
    _stopping = False

    async def stop(self) -> None:
        self._stopping = True
        await super().stop()

    async def _retrying(self, query: Callable[[], Awaitable[T]]) -> T:
        if conn_var.get(None) is not None:
            return await query()  # inside acquire()/a transaction: the caller decides
        pause = 0.5
        while True:
            try:
                result = await query()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if self._stopping:
                    raise  # the bridge is stopping: do not wait for the server
                if not unavailable(e):
                    raise
                if not self._outage:
                    self._outage = True
                    self.log.warning("database unavailable (%s); waiting for it", _short(e))
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_PAUSE)
                continue
            if self._outage:
                self._outage = False
                self.log.warning("database available again")
            return result

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        return await self._retrying(
            lambda: super(ResilientPostgresDatabase, self).execute(query, *args, timeout=timeout)
        )

    async def executemany(self, query: str, *args: Any, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        return await self._retrying(
            lambda: super(ResilientPostgresDatabase, self).executemany(
                query, *args, timeout=timeout
            )
        )

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        return await self._retrying(
            lambda: super(ResilientPostgresDatabase, self).fetch(query, *args, timeout=timeout)
        )

    async def fetchval(
        self,
        query: str,
        *args: Any,
        column: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109 (mautrix's signature)
    ) -> Any:
        return await self._retrying(
            lambda: super(ResilientPostgresDatabase, self).fetchval(
                query, *args, column=column, timeout=timeout
            )
        )

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        return await self._retrying(
            lambda: super(ResilientPostgresDatabase, self).fetchrow(query, *args, timeout=timeout)
        )


def _short(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
