"""Helpers for the lease tests: workers in the test's own event loop, a ledger that fails on a
shard held by two workers at once, and a TCP proxy that can cut one worker off from NATS."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import nats

from bridge.scale.leases import ShardLeases


@dataclass
class Event:
    at: float  # loop time
    worker: str
    kind: str  # "gain" | "lose"
    shard: str
    revision: int | None


@dataclass
class Ledger:
    """Every gain and loss of every worker, in the order they happened; a gain of a shard that
    another worker has not lost yet is a violation."""

    events: list[Event] = field(default_factory=list)
    holder: dict[str, str] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def gain(self, worker: str, shard: str, revision: int | None) -> None:
        other = self.holder.get(shard)
        if other is not None:
            self.violations.append(f"{worker} gained {shard} while {other} held it")
        self.holder[shard] = worker
        self._log(worker, "gain", shard, revision)

    def lose(self, worker: str, shard: str) -> None:
        if self.holder.get(shard) != worker:
            self.violations.append(f"{worker} lost {shard} it did not hold")
        else:
            del self.holder[shard]
        self._log(worker, "lose", shard, None)

    def _log(self, worker: str, kind: str, shard: str, revision: int | None) -> None:
        at = asyncio.get_running_loop().time()
        self.events.append(Event(at, worker, kind, shard, revision))

    def of(self, worker: str, kind: str) -> list[Event]:
        return [e for e in self.events if e.worker == worker and e.kind == kind]


@dataclass
class Worker:
    name: str
    nc: nats.NATS
    leases: ShardLeases

    def owned(self) -> frozenset[str]:
        return self.leases.owned()


async def connect(url: str) -> nats.NATS:
    return await nats.connect(
        url,
        connect_timeout=5,
        reconnect_time_wait=0.2,
        max_reconnect_attempts=-1,
        # a frozen link must not look alive for long to the client either
        ping_interval=30,
    )


@contextlib.asynccontextmanager
async def workers_on(url: str, ledger: Ledger, **options: Any) -> AsyncIterator[WorkerPool]:
    pool = WorkerPool(url, ledger, options)
    try:
        yield pool
    finally:
        await pool.close()


class WorkerPool:
    def __init__(self, url: str, ledger: Ledger, options: dict[str, Any]) -> None:
        self.url = url
        self.ledger = ledger
        self.options = options
        self.workers: list[Worker] = []

    async def start(self, name: str, shards: list[str], url: str | None = None) -> Worker:
        nc = await connect(url or self.url)

        async def gain(shard: str) -> None:
            self.ledger.gain(name, shard, leases.revision(shard))

        async def lose(shard: str) -> None:
            self.ledger.lose(name, shard)

        leases = ShardLeases(
            nc.jetstream(timeout=5), name, shards, on_gain=gain, on_lose=lose, **self.options
        )
        await leases.start()
        worker = Worker(name, nc, leases)
        self.workers.append(worker)
        return worker

    async def stop(self, worker: Worker, release: bool = True) -> None:
        await worker.leases.stop(release=release)
        await worker.nc.close()
        self.workers.remove(worker)

    async def close(self) -> None:
        for worker in list(self.workers):
            with contextlib.suppress(Exception):
                await self.stop(worker)


def shares(*workers: Worker) -> list[int]:
    return sorted(len(w.owned()) for w in workers)


def disjoint(*workers: Worker) -> bool:
    seen: set[str] = set()
    for w in workers:
        if seen & w.owned():
            return False
        seen |= w.owned()
    return True


class FreezableProxy:
    """Forwards TCP to ``upstream``; ``freeze()`` stops moving bytes (connections stay open,
    as when a link or a host hangs), ``thaw()`` moves them again."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            return
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                await self._flowing.wait()
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            dst.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
