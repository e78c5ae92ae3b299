"""An asyncio client for ``deltachat-rpc-server``: JSON-RPC 2.0 over the server's stdin and
stdout, one JSON object per line.

The official ``deltachat-rpc-client`` drives the same server with threads and blocking
queues; here requests are futures on the bridge's event loop and events arrive through
``get_next_event_batch`` long-polls, so nothing blocks the loop. When the server process dies
the pending requests fail with :class:`RpcDown`, the process is restarted with backoff (the
core keeps its accounts and its outgoing queue on disk, so nothing it accepted is lost), and
callers that wait with ``call(..., wait_up=True)`` carry on after the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

EventHandler = Callable[[int, dict[str, Any]], Awaitable[None]]


class RpcError(Exception):
    """The core answered a request with an error."""

    def __init__(self, method: str, error: Any) -> None:
        message = error.get("message") if isinstance(error, dict) else str(error)
        super().__init__(f"{method}: {message}")
        self.method = method
        self.error = error


class RpcDown(Exception):
    """The server process is not running (crashed, restarting, or stopped)."""


def find_server() -> str:
    """The ``deltachat-rpc-server`` executable of this Python environment, or on PATH."""
    local = Path(sys.executable).parent / "deltachat-rpc-server"
    if local.exists():
        return str(local)
    found = shutil.which("deltachat-rpc-server")
    if found:
        return found
    raise FileNotFoundError("deltachat-rpc-server not found: pip install deltachat-rpc-server")


class Rpc:
    def __init__(
        self,
        accounts_dir: Path,
        on_event: EventHandler,
        log: logging.Logger,
        server: str | None = None,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
        on_restart: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.accounts_dir = accounts_dir
        self.on_event = on_event
        self.log = log
        self.server = server or find_server()
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.on_restart = on_restart
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[str, asyncio.Future[Any]]] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._up = asyncio.Event()
        self._closing = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._supervisor: asyncio.Task[None] | None = None
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def is_up(self) -> bool:
        return self._up.is_set()

    async def wait_up(self, limit_s: float) -> bool:
        """Wait until the server runs (at most ``limit_s`` seconds); whether it does."""
        if self._up.is_set():
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up.wait(), limit_s)
        return self._up.is_set()

    async def start(self) -> None:
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="deltachat-rpc-supervisor")

    async def _spawn(self) -> None:
        self.accounts_dir.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "DC_ACCOUNTS_PATH": str(self.accounts_dir)}
        env.setdefault("RUST_LOG", "warn")
        self._proc = await asyncio.create_subprocess_exec(
            self.server,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            limit=64 * 1024 * 1024,
            start_new_session=True,
        )
        proc = self._proc
        self._tasks = [
            asyncio.create_task(self._read(proc), name="deltachat-rpc-reader"),
            asyncio.create_task(self._stderr(proc), name="deltachat-rpc-stderr"),
        ]
        self._up.set()
        try:
            info = await asyncio.wait_for(self.call("get_system_info"), 30)
        except Exception as e:
            self._up.clear()
            raise RpcDown(f"deltachat-rpc-server did not start: {e}") from e
        self.log.info(
            "Delta Chat core %s running (pid %s)", info.get("deltachat_core_version"), proc.pid
        )
        self._tasks.append(asyncio.create_task(self._events(), name="deltachat-rpc-events"))

    async def _supervise(self) -> None:
        """Restart the server whenever it exits, with exponential backoff."""
        delay = self.min_backoff
        while not self._closing:
            proc = self._proc
            assert proc is not None
            await proc.wait()
            self._up.clear()
            self._fail_pending(RpcDown("deltachat-rpc-server exited"))
            for t in self._tasks:
                t.cancel()
            if self._closing:
                return
            self.log.warning(
                "deltachat-rpc-server exited with %s; restarting in %.1f s", proc.returncode, delay
            )
            while not self._closing:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                try:
                    await self._spawn()
                except (OSError, RpcDown) as e:
                    self.log.warning("restarting deltachat-rpc-server failed: %s", e)
                    if self._proc and self._proc.returncode is None:
                        with contextlib.suppress(ProcessLookupError):
                            self._proc.kill()
                        await self._proc.wait()
                    continue
                self.restarts += 1
                delay = self.min_backoff
                if self.on_restart is not None:
                    try:
                        await self.on_restart()
                    except Exception:
                        self.log.exception("resuming after a core restart failed")
                break

    def _fail_pending(self, exc: Exception) -> None:
        pending, self._pending = self._pending, {}
        for _method, fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                line = await proc.stdout.readline()
            except (ValueError, asyncio.LimitOverrunError) as e:
                self.log.error("unreadable answer from deltachat-rpc-server: %s", e)
                continue
            if not line:
                return
            try:
                msg = json.loads(line)
            except ValueError:
                self.log.warning("non-JSON line from deltachat-rpc-server ignored")
                continue
            req = msg.get("id") if isinstance(msg, dict) else None
            entry = self._pending.pop(req, None) if isinstance(req, int) else None
            if entry is None:
                continue
            method, fut = entry
            if fut.done():
                continue
            if "error" in msg:
                fut.set_exception(RpcError(method, msg["error"]))
            else:
                fut.set_result(msg.get("result"))

    async def _stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            self.log.debug("core: %s", line.decode(errors="replace").rstrip())

    async def _events(self) -> None:
        while True:
            try:
                batch = await self.call("get_next_event_batch")
            except RpcDown:
                return
            except RpcError as e:
                self.log.warning("event poll failed: %s", e)
                await asyncio.sleep(0.5)
                continue
            for item in batch or []:
                try:
                    await self.on_event(int(item["contextId"]), item["event"])
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.log.exception("handling Delta Chat event %s failed", item.get("event"))

    async def call(
        self, method: str, *params: Any, wait_up: float = 0.0, deadline: float | None = None
    ) -> Any:
        """Call a core method. With ``wait_up`` (seconds), wait that long for a restarting
        server instead of failing at once with :class:`RpcDown`."""
        if not self._up.is_set():
            if wait_up <= 0 or self._closing:
                raise RpcDown("deltachat-rpc-server is not running")
            try:
                await asyncio.wait_for(self._up.wait(), wait_up)
            except TimeoutError as e:
                raise RpcDown("deltachat-rpc-server is not running") from e
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        req_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = (method, fut)
        data = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": req_id})
        try:
            proc.stdin.write(data.encode() + b"\n")
            await proc.stdin.drain()
        except (ConnectionError, RuntimeError) as e:
            self._pending.pop(req_id, None)
            raise RpcDown(f"deltachat-rpc-server pipe closed: {e}") from e
        if deadline is None:
            return await fut
        try:
            return await asyncio.wait_for(fut, deadline)
        finally:
            self._pending.pop(req_id, None)

    async def kill(self) -> None:
        """Kill the server process (tests: a core crash); the supervisor restarts it."""
        if self._proc and self._proc.returncode is None:
            self._proc.kill()

    async def close(self) -> None:
        self._closing = True
        if self._up.is_set():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.call("stop_io_for_all_accounts"), 10)
        proc = self._proc
        if proc and proc.returncode is None:
            assert proc.stdin is not None
            with contextlib.suppress(Exception):
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._up.clear()
        self._fail_pending(RpcDown("closed"))
        for t in [*self._tasks, *([self._supervisor] if self._supervisor else [])]:
            t.cancel()
        for t in [*self._tasks, *([self._supervisor] if self._supervisor else [])]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
