"""Posting a room's Matrix messages to a hook's outgoing URL.

The body is the Slack outgoing-webhook shape as JSON; ``X-Mimi-Signature: sha256=<hex>`` is the
HMAC-SHA256 of ``<X-Mimi-Timestamp>.<body>`` with the hook's secret, so the receiver can check
origin and freshness. Each hook has one queue (messages arrive in order); a failed post is
tried again with exponential backoff, and when a message is given up the room is told once,
until a post succeeds again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from .config import WebhooksConfig
from .store import Hook

Notify = Callable[[Hook, str], Awaitable[None]]


@dataclass(slots=True)
class Outbound:
    hook: Hook
    payload: dict[str, Any]


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class Delivery:
    def __init__(self, cfg: WebhooksConfig, notify: Notify, log: Any) -> None:
        self.cfg = cfg
        self.notify = notify
        self.log = log
        self.session: aiohttp.ClientSession | None = None
        self._queues: dict[str, asyncio.Queue[Outbound]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._failing: set[str] = set()

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.cfg.outgoing_timeout)
        )

    async def stop(self) -> None:
        for task in self._workers.values():
            task.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
        self._workers.clear()
        if self.session:
            await self.session.close()

    def submit(self, item: Outbound) -> None:
        queue = self._queues.setdefault(item.hook.id, asyncio.Queue())
        queue.put_nowait(item)
        if item.hook.id not in self._workers or self._workers[item.hook.id].done():
            self._workers[item.hook.id] = asyncio.create_task(self._work(item.hook.id, queue))

    async def _work(self, hook_id: str, queue: asyncio.Queue[Outbound]) -> None:
        while not queue.empty():
            item = queue.get_nowait()
            error = await self._post_with_retries(item)
            if error is None:
                self._failing.discard(hook_id)
            elif hook_id not in self._failing:
                self._failing.add(hook_id)
                await self.notify(
                    item.hook,
                    f"The webhook {item.hook.name!r} could not deliver to its outgoing URL"
                    f" ({error}); messages are dropped until it answers again."
                    " This is said once.",
                )

    async def _post_with_retries(self, item: Outbound) -> str | None:
        """None when delivered, else the last error."""
        assert self.session is not None and item.hook.outgoing_url
        body = json.dumps(item.payload).encode("utf-8")
        error = ""
        for attempt in range(self.cfg.outgoing_retries + 1):
            if attempt:
                await asyncio.sleep(self.cfg.outgoing_backoff * 2 ** (attempt - 1))
            stamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "X-Mimi-Timestamp": stamp,
                "X-Mimi-Signature": sign(item.hook.outgoing_secret or "", stamp, body),
            }
            try:
                async with self.session.post(
                    item.hook.outgoing_url, data=body, headers=headers
                ) as resp:
                    if resp.status < 300:
                        return None
                    error = f"HTTP {resp.status}"
                    if 400 <= resp.status < 500 and resp.status not in (408, 429):
                        break  # the receiver refuses this message: trying again will not help
            except (aiohttp.ClientError, TimeoutError) as e:
                error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            self.log.info("outgoing post of hook %s failed (%s)", item.hook.id, error)
        return error
