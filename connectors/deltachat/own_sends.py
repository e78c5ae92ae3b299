"""The messages the bridge is sending from each account right now.

An account's message the bridge did not send was written on another device of the account (the
user's phone): the core shows it as the account's own (``fromId`` is the account itself), like
the bridge's sends. The bridge's sends are recorded in the store once ``send_msg`` returns;
events about a send in flight wait for that record (:meth:`OwnSends.settled`) before the
message is told apart by it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class OwnSends:
    def __init__(self) -> None:
        self._busy: dict[int, int] = {}
        self._idle: dict[int, asyncio.Event] = {}

    @contextlib.asynccontextmanager
    async def sending(self, account: int) -> AsyncIterator[None]:
        """Around a send, until its message is recorded."""
        self._busy[account] = self._busy.get(account, 0) + 1
        self._idle.setdefault(account, asyncio.Event()).clear()
        try:
            yield
        finally:
            self._busy[account] -= 1
            if not self._busy[account]:
                del self._busy[account]
                self._idle[account].set()

    async def settled(self, account: int, limit: float) -> None:
        """Returns once no send of ``account`` is in flight (or after ``limit`` seconds)."""
        idle = self._idle.get(account)
        if idle is not None and not idle.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(idle.wait(), limit)
