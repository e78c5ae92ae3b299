"""Scale-out mode as processes (``mimi-bridge -c config`` and ``mimi-bridge -c config
worker``), for the fault tests, and numbered traffic both ways between a Matrix user and an
IRC user, counted at the end."""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bridge.testing.synapse import MatrixClient
from tests.bridge_process import BridgeProcess
from tests.irc.conftest import RawIRC


class WorkerProcess:
    def __init__(self, config: Path, name: str) -> None:
        self.config = config
        self.name = name
        self.log_path = config.parent / f"worker-{name}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "-c", str(self.config), "worker",
                stdout=log, stderr=log,
            )  # fmt: skip
        for _ in range(900):
            if (code := self.proc.returncode) is not None:
                raise AssertionError(f"worker exited with {code}:\n{self.tail()}")
            if "worker " in self.text() and " started for " in self.text():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"worker did not start:\n{self.tail()}")

    def text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def runs(self, connector: str) -> bool:
        """Whether its last word on ``connector`` is that it runs it."""
        starts = [
            m.start() for m in re.finditer(f"connector {connector} started here", self.text())
        ]
        stops = [m.start() for m in re.finditer(f"connector {connector} stopped here", self.text())]
        return bool(starts) and (not stops or stops[-1] < starts[-1]) and self.proc is not None

    def shards(self, network: str) -> set[str]:
        """The shards of ``network`` it says (in its log) it holds now."""
        held: set[str] = set()
        pattern = rf"shard ({re.escape(network)}\.\w+) of \S+ (held|given up) here"
        for shard, what in re.findall(pattern, self.text()):
            (held.add if what == "held" else held.discard)(shard)
        return held

    def holds_main(self, network: str) -> bool:
        return self.proc is not None and f"{network}.main" in self.shards(network)

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()
        self.proc = None

    async def stop(self) -> int:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return proc.returncode if proc else 0
        proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return -9

    def tail(self, chars: int = 4000) -> str:
        return self.text()[-chars:]


def shared_out(workers: list[WorkerProcess], network: str, shards: int = 256) -> bool:
    """Every shard of a network held once, and the workers balanced (by their logs)."""
    held = [w.shards(network) for w in workers]
    counts = sorted(len(h) for h in held)
    return (
        sum(counts) == shards + 1
        and len(set().union(*held)) == shards + 1
        and counts[-1] - counts[0] <= 1
    )


async def core_process(config: Path, port: int) -> BridgeProcess:
    core = BridgeProcess(config, port)
    await core.start(until_started=True)
    return core


@dataclass
class Counts:
    sent: int
    received: int
    lost: int
    duplicated: int
    reordered: int

    def __str__(self) -> str:
        return (
            f"sent {self.sent}, received {self.received}, lost {self.lost},"
            f" duplicated {self.duplicated}, reordered {self.reordered}"
        )


def count(sent: list[int], got: list[int]) -> Counts:
    seen: set[int] = set()
    dup = 0
    for n in got:
        if n in seen:
            dup += 1
        seen.add(n)
    first = []
    for n in got:
        if n not in first:
            first.append(n)
    reordered = sum(1 for a, b in itertools.pairwise(first) if b < a)
    return Counts(len(sent), len(got), len(set(sent) - seen), dup, reordered)


@dataclass
class Traffic:
    """Numbered messages both ways, one every ``every_s`` each way."""

    matrix: MatrixClient
    room: str
    irc: RawIRC
    channel: str
    puppet: str
    every_s: float = 0.3
    to_irc: list[int] = field(default_factory=list)
    to_matrix: list[int] = field(default_factory=list)
    uncertain: list[int] = field(default_factory=list)
    irc_paused: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._matrix_loop()),
            asyncio.create_task(self._irc_loop()),
        ]

    async def _matrix_loop(self) -> None:
        n = 0
        while True:
            n += 1
            if self._stopping.is_set():
                return  # between sends: a send is never cut short
            self.to_irc.append(n)
            try:
                await self.matrix.send_text(self.room, f"m2i {n}")
            except Exception:
                self.to_irc.remove(n)
                self.uncertain.append(n)  # maybe taken, maybe not: not counted either way
            await asyncio.sleep(self.every_s)

    async def _irc_loop(self) -> None:
        n = 0
        while True:
            if not self.irc_paused.is_set():
                n += 1
                self.irc.send(f"PRIVMSG {self.channel} :i2m {n}")
                self.to_matrix.append(n)
            await asyncio.sleep(self.every_s)

    async def stop(self) -> None:
        self._stopping.set()
        await asyncio.wait_for(asyncio.shield(self._tasks[0]), 60)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def got_on_irc(self) -> list[int]:
        return [
            int(ln.param(1).split()[1])
            for ln in self.irc.messages(self.channel)
            if ln.nick == self.puppet and ln.param(1).startswith("m2i ")
        ]

    async def got_on_matrix(self) -> list[int]:
        events = await self.matrix.messages(self.room, limit=1000)
        return [
            int(e["content"]["body"].split()[1])
            for e in events
            if e["type"] == "m.room.message"
            and str(e["content"].get("body", "")).startswith("i2m ")
        ]

    async def settle(self, limit_s: float = 120.0) -> tuple[Counts, Counts]:
        """Stop sending, wait until everything sent arrived (or the limit), count."""
        await self.stop()
        end = time.monotonic() + limit_s
        while time.monotonic() < end:
            if set(self.to_irc) <= set(self.got_on_irc()) and set(self.to_matrix) <= set(
                await self.got_on_matrix()
            ):
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)  # doubles, if any, have come by now
        on_irc = [n for n in self.got_on_irc() if n not in self.uncertain]
        return count(self.to_irc, on_irc), count(self.to_matrix, await self.got_on_matrix())
