"""Delivery of messages sent from Matrix: while the mail server has not taken them the core is
nudged to retry now and then, and the Matrix sender hears about a message that failed."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from bridge.connector import PortalKey

from .rpc import Rpc, RpcDown, RpcError

_REMEMBERED = 10_000  # senders of the latest messages, for failure notices


class Deliveries:
    def __init__(self, rpc: Rpc, bridge: Any) -> None:
        self.rpc = rpc
        self.bridge = bridge
        self._undelivered: set[tuple[int, int]] = set()
        self._sent_by: dict[tuple[int, int], tuple[str, PortalKey]] = {}
        self._nudger: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._nudger = asyncio.create_task(self._nudge_loop(), name="deltachat-nudge")

    def stop(self) -> None:
        if self._nudger:
            self._nudger.cancel()

    def sent(self, account: int, msg_id: int, user_id: str, portal: PortalKey) -> None:
        """A Matrix user's message is in the core's outgoing queue."""
        self._undelivered.add((account, msg_id))
        self._sent_by[(account, msg_id)] = (user_id, portal)
        if len(self._sent_by) > _REMEMBERED:
            self._sent_by.pop(next(iter(self._sent_by)))

    def delivered(self, account: int, msg_id: int) -> None:
        self._undelivered.discard((account, msg_id))

    async def failed(self, account: int, msg_id: int) -> None:
        self._undelivered.discard((account, msg_id))
        who = self._sent_by.get((account, msg_id))
        if who is None:
            return
        try:
            msg = await self.rpc.call("get_message", account, msg_id)
            reason = msg.get("error") or "the mail server refused it"
        except RpcError:
            reason = "the mail server refused it"
        await self.bridge.notify(who[0], f"Your message was not delivered: {reason}", who[1])

    async def _nudge_loop(self) -> None:
        """While sent messages wait for the mail server, ask the core to retry now and then
        (with backoff) instead of waiting for its own longer timers."""
        delay = 2.0
        while True:
            await asyncio.sleep(delay)
            if not self._undelivered or not self.rpc.is_up:
                delay = 2.0
                continue
            with contextlib.suppress(RpcError, RpcDown):
                await self.rpc.call("maybe_network")
            delay = min(delay * 2, 60.0)
