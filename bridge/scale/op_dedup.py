"""Per-shard dedup of operations by id: a retried operation gets the first one's answer and
the network sees it once, on this worker or on the next holder of the shard."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BadRequestError, BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

from .subjects import OPS_BUCKET


async def open_ops_bucket(js: JetStreamContext, ttl: float) -> KeyValue:
    try:
        return await js.key_value(OPS_BUCKET)
    except BucketNotFoundError:
        try:
            return await js.create_key_value(
                KeyValueConfig(
                    bucket=OPS_BUCKET,
                    description="mimi-bridge: answers of operations performed",
                    history=1,
                    ttl=ttl,
                    storage=StorageType.FILE,
                )
            )
        except BadRequestError:
            return await js.key_value(OPS_BUCKET)  # another worker made it first


class OpDedup:
    def __init__(self, kv: KeyValue, log: logging.Logger) -> None:
        self.kv = kv
        self.log = log
        self._in_flight: dict[str, asyncio.Future[bytes]] = {}
        self.performed = 0
        self.deduplicated = 0

    async def run(self, shard: str, op_id: str, perform: Callable[[], Awaitable[bytes]]) -> bytes:
        """``perform``'s answer, performing it only if no answer for ``op_id`` is known."""
        key = f"{shard}.{op_id}"
        running = self._in_flight.get(key)
        if running is not None:  # the core retried while the first try still runs
            self.deduplicated += 1
            return await asyncio.shield(running)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            stored = await self._stored(key)
            if stored is not None:
                self.deduplicated += 1
                future.set_result(stored)
                return stored
            answer = await perform()
            self.performed += 1
            await self._store(key, answer)
            future.set_result(answer)
            return answer
        except BaseException as e:
            if not future.done():
                future.set_exception(e)
                future.exception()  # retrieved: a waiter may not exist
            raise
        finally:
            del self._in_flight[key]

    async def _stored(self, key: str) -> bytes | None:
        while True:
            try:
                entry = await self.kv.get(key)
                return entry.value or b""
            except KeyNotFoundError:
                return None
            except NatsError as e:
                # Not knowing whether it ran, it must not run: wait for the bucket.
                self.log.info("operation log unreachable (%s); waiting", e)
                await asyncio.sleep(0.5)

    async def _store(self, key: str, answer: bytes) -> None:
        for _ in range(20):
            try:
                await self.kv.put(key, answer)
                return
            except NatsError as e:
                self.log.info("operation log unreachable (%s); retrying", e)
                await asyncio.sleep(0.5)
        self.log.warning("the answer of %s was not stored: a retry may run it again", key)
