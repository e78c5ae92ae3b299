"""Core calls made for a Matrix user: they wait for a restarting core, are tried again after a
restart (within ``send_timeout``), and turn the core's errors into readable ones."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from bridge.connector import ConnectorError

from .rpc import Rpc, RpcDown, RpcError

T = TypeVar("T")


class CoreDown(ConnectorError):
    """The Delta Chat core is restarting; the action is tried again once it runs."""


def core_down(e: Exception) -> CoreDown:
    return CoreDown(f"the Delta Chat core is not running ({e})")


class CoreCalls:
    def __init__(self, rpc: Rpc, send_timeout: float) -> None:
        self.rpc = rpc
        self.send_timeout = send_timeout

    async def call(self, method: str, *params: Any) -> Any:
        """A core call on behalf of a Matrix user: waits for a restarting core, and turns
        core errors into readable ones."""
        try:
            return await self.rpc.call(method, *params, wait_up=self.send_timeout)
        except RpcDown as e:
            raise core_down(e) from e
        except RpcError as e:
            raise ConnectorError(f"Delta Chat refused it: {e}") from e

    async def retrying(self, action: Callable[[], Awaitable[T]]) -> T:
        """Run a Matrix user's action, again after a core restart (up to ``send_timeout``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.send_timeout
        while True:
            try:
                return await action()
            except (CoreDown, RpcDown) as e:
                left = deadline - loop.time()
                if left <= 0 or not await self.rpc.wait_up(left):
                    raise ConnectorError(f"the Delta Chat core is not running ({e})") from e
                await asyncio.sleep(0.1)
