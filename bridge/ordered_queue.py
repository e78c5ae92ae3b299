"""Per-key ordered processing: events of one portal are handled one after another, in the
order they arrived, while different portals proceed concurrently."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable

Job = Callable[[], Awaitable[None]]
# Told what went wrong when a job fails unexpectedly: tells whoever the job was for.
OnFailure = Callable[[Exception], Awaitable[None]]


class OrderedQueues:
    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        # Each job with the time.monotonic() it was submitted at (for the metrics).
        self._queues: dict[Hashable, deque[tuple[float, Job, OnFailure | None]]] = {}
        self._workers: dict[Hashable, asyncio.Task[None]] = {}
        self._running_since: dict[Hashable, float] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    def submit(self, key: Hashable, job: Job, on_failure: OnFailure | None = None) -> None:
        """Queue ``job`` behind the others of ``key``. ``on_failure`` is awaited with the
        error if the job raises: the job's user must hear of it, not only the log."""
        q = self._queues.setdefault(key, deque())
        q.append((time.monotonic(), job, on_failure))
        self._idle.clear()
        if key not in self._workers:
            self._workers[key] = asyncio.create_task(self._run(key), name=f"queue:{key}")

    def in_worker(self, key: Hashable) -> bool:
        """Whether the caller is the job running in ``key``'s queue (which would wait forever
        for anything it submits to the same queue before returning)."""
        task = self._workers.get(key)
        return task is not None and task is asyncio.current_task()

    async def _run(self, key: Hashable) -> None:
        q = self._queues[key]
        try:
            while q:
                self._running_since[key], job, on_failure = q.popleft()
                try:
                    await job()
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    # The last resort: jobs report their own failures; this keeps the queue
                    # alive and still tells the job's user.
                    self.log.exception("unhandled error in the queue of %s", key)
                    await self._tell(key, on_failure, e)
        finally:
            del self._workers[key]
            self._running_since.pop(key, None)
            if not q:
                del self._queues[key]
            if not self._workers:
                self._idle.set()

    def stats(self) -> dict[Hashable, tuple[int, float | None]]:
        """Per key: jobs waiting or running, and when the oldest of them was submitted."""
        out: dict[Hashable, tuple[int, float | None]] = {}
        for key, q in self._queues.items():
            running = self._running_since.get(key)
            oldest = running if running is not None else (q[0][0] if q else None)
            out[key] = (len(q) + (running is not None), oldest)
        return out

    async def _tell(self, key: Hashable, on_failure: OnFailure | None, error: Exception) -> None:
        if on_failure is None:
            return
        try:
            await on_failure(error)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("could not report a failure in the queue of %s", key)

    async def drain(self) -> None:
        """Wait until every queued job has run."""
        await self._idle.wait()

    async def close(self) -> None:
        for task in list(self._workers.values()):
            task.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
