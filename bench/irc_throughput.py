"""Message throughput and latency through the bridge with the IRC connector, measured against
Synapse's own ceiling in the same run, on loopback.

Starts ngircd (tests/harness/ircd.py, flood limits off: ``MaxPenaltyTime = 0``) and Synapse
(tests/harness/synapse.py, SQLite, rate limits off) with two appservices: the bridge (in this
process, SQLite, IRC flood control off) and a plain listener that only acknowledges and stamps
transactions. In K rooms/channels at once, one request at a time per room (as a client that
keeps order does), rounds of:

A1.  Synapse's ceiling, Matrix user -> appservice: a Matrix user sends N messages into rooms of
     the plain listener; time until the listener has them all.
B.   Matrix -> IRC through the bridge: the same user sends N into portal rooms; an IRC client
     counts N PRIVMSGs from the user's puppet and checks their order.
A2.  Synapse's ceiling for an appservice sending as a ghost (what the bridge does for IRC ->
     Matrix), with the content the bridge sends for a line without mentions.
C.   IRC -> Matrix through the bridge: an IRC client sends N lines as fast as it can; the
     Matrix side is the appservice stream, where Synapse hands the ghosts' events back.

then D, IRC -> Matrix paced at half of A2's rate, for latency below saturation. Interleaving
the rounds (after one warm-up round) keeps both sides under the same load when other work
shares the machine.

Reported: msg/s and the ratio to Synapse's ceiling, loss, duplicates, order violations, CPU per
message (Synapse's process, this process: user + system time over the phase / messages), the
bridge's resident memory (idle, as the ``mimi-bridge`` command run on its own with the same
config before and after the rounds; and this process's before and after), and latency: for B
the bridge's part is the PRIVMSG's arrival at the IRC client minus the arrival at the bridge of
the appservice transaction that carried the event (ngircd's relay included); for C/D it is the
bridge's PUT to Synapse minus the moment it could start on the line (the line arrived and the
room's previous message was sent).
End-to-end latencies are printed too. The load generators (Matrix sender, IRC sender, IRC
observer) run in their own processes; timestamps are CLOCK_MONOTONIC, shared by all processes.
Figures only, no assertions. Targets: >= 90 % of Synapse's ceiling, p99 added latency < 10 ms,
<= 0.5 ms of bridge CPU per message each way, < 45 MiB idle RSS.

    /tmp/venv/bin/python bench/irc_throughput.py [-n 2400] [-k 4] [-r 3] [--profile]
    /tmp/venv/bin/python bench/irc_throughput.py --idle   # only the idle RSS, with a breakdown

``--profile`` runs cProfile (CPU time of the main thread) in B and C, which inflates their
CPU figures.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import cProfile
import json
import logging
import os
import pstats
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

AS_TOKEN = "bench-as-token-0123456789"
HS_TOKEN = "bench-hs-token-0123456789"
PLAIN_AS_TOKEN = "bench-plain-as-token-0123"
PLAIN_HS_TOKEN = "bench-plain-hs-token-0123"
DOMAIN = "localhost"
NETID = "bench"
IRC_SENDER = "benchirc"
IRC_OBSERVER = "benchobs"

Stamp = tuple[float, bytes]
B_ADDED = "added by the bridge (transaction in -> PRIVMSG at the IRC client)"
C_ADDED = "added by the bridge (ready -> PUT to Synapse)"


def now() -> float:
    return time.monotonic()


def q(value: str) -> str:
    return quote(value, safe="")


# --- workers (separate processes) ----------------------------------------------------------------


async def worker_matrix_send(spec: dict[str, Any]) -> dict[str, Any]:
    """Send ``n`` messages into each room, one request at a time per room, rooms in parallel."""
    url, token, rooms, n, tag = spec["url"], spec["token"], spec["rooms"], spec["n"], spec["tag"]
    params = {"user_id": spec["user_id"]} if spec.get("user_id") else {}
    headers = {"Authorization": f"Bearer {token}"}
    errors = 0
    starts: list[float] = []
    ends: list[float] = []
    took: list[float] = []
    started: list[tuple[float, int, int]] = []
    conn = aiohttp.TCPConnector(limit=len(rooms) + 2)
    async with aiohttp.ClientSession(connector=conn, headers=headers) as http:

        async def one_room(ri: int, room: str) -> None:
            nonlocal errors
            for seq in range(n):
                body: dict[str, Any] = {"msgtype": "m.text", "body": f"{tag} {ri} {seq}"}
                path = f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/{tag}.{ri}.{seq}"
                t = now()
                starts.append(t)
                started.append((t, ri, seq))
                async with http.put(url + path, json=body, params=params) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                ends.append(now())
                took.append(ends[-1] - t)

        await asyncio.gather(*(one_room(i, r) for i, r in enumerate(rooms)))
    return {
        "t0": min(starts),
        "t1": max(ends),
        "errors": errors,
        "took": took,
        "started": started,
    }


class IrcWorker:
    """An IRC user for the benchmark: joins channels, then sends or records on command."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.seen: dict[str, list[tuple[float, str, str]]] = {}
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.changed = asyncio.Event()

    async def connect(self) -> None:
        s = self.spec
        self.reader, self.writer = await asyncio.open_connection(s["host"], s["port"])
        nick = s["nick"]
        self.writer.write(f"NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\n".encode())
        pending = {c.lower() for c in s["channels"]}
        welcomed = False
        while pending:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("closed during setup")
            parts = line.decode("utf-8", "replace").split()
            if parts and parts[0] == "PING":
                self.writer.write(b"PONG " + line[5:])
            elif len(parts) > 1 and parts[1] == "001" and not welcomed:
                welcomed = True
                self.writer.write("".join(f"JOIN {c}\r\n" for c in s["channels"]).encode())
            elif len(parts) > 3 and parts[1] == "366":
                pending.discard(parts[3].lower())

    async def read_loop(self) -> None:
        assert self.reader is not None and self.writer is not None
        while True:
            line = await self.reader.readline()
            if not line:
                return
            t = now()
            if line.startswith(b"PING"):
                self.writer.write(b"PONG " + line[5:])
                continue
            # :nick!user@host PRIVMSG #chan :TAG ri seq
            parts = line.rstrip(b"\r\n").split(b" ", 3)
            if len(parts) == 4 and parts[1] == b"PRIVMSG":
                text = parts[3][1:].decode("utf-8", "replace")
                tag = text.split(" ", 1)[0]
                self.seen.setdefault(tag, []).append((t, parts[2].decode(), text))
                self.changed.set()

    async def collect(self, tag: str, expect: int, timeout: float) -> list[Any]:  # noqa: ASYNC109
        deadline = now() + timeout
        while len(self.seen.get(tag, [])) < expect and now() < deadline:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - now()))
            except TimeoutError:
                break
        return self.seen.get(tag, [])

    async def send(self, tag: str, n: int, rate: float) -> dict[str, Any]:
        assert self.writer is not None
        chans = self.spec["channels"]
        sent = []
        t0 = now()
        i = 0
        for seq in range(n):
            for ci, chan in enumerate(chans):
                if rate > 0:
                    wait = t0 + i / rate - now()
                    if wait > 0:
                        await asyncio.sleep(wait)
                sent.append((now(), ci, seq))
                self.writer.write(f"PRIVMSG {chan} :{tag} {ci} {seq}\r\n".encode())
                i += 1
                if rate <= 0 and i % 64 == 0:
                    await self.writer.drain()
        await self.writer.drain()
        return {"t0": t0, "t1": now(), "sent": sent}


async def worker_irc(spec: dict[str, Any]) -> None:
    """Commands on stdin, one JSON answer per line on stdout: ``COLLECT tag n timeout``,
    ``SEND tag n_per_channel rate``; EOF quits."""
    w = IrcWorker(spec)
    await w.connect()
    reader_task = asyncio.create_task(w.read_loop())
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while True:
        raw = await stdin.readline()
        if not raw:
            break
        cmd, *args = raw.decode().split()
        if cmd == "COLLECT":
            got = await w.collect(args[0], int(args[1]), float(args[2]))
            print(json.dumps(got), flush=True)
        elif cmd == "SEND":
            result = await w.send(args[0], int(args[1]), float(args[2]))
            print(json.dumps(result), flush=True)
    reader_task.cancel()
    assert w.writer is not None
    w.writer.write(b"QUIT :done\r\n")
    await w.writer.drain()


def run_worker(role: str, spec: dict[str, Any]) -> None:
    if role == "matrix-send":
        print(json.dumps(asyncio.run(worker_matrix_send(spec))), flush=True)
    else:
        asyncio.run(worker_irc(spec))


# --- orchestration -------------------------------------------------------------------------------


class Worker:
    """A worker process talking JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, role: str, spec: dict[str, Any]) -> Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--worker",
            role,
            json.dumps(spec),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,
        )
        return cls(proc)

    async def line(self, timeout: float = 300) -> str:  # noqa: ASYNC109
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            raise RuntimeError("worker exited early")
        return raw.decode()

    async def ask(self, command: str, timeout: float = 300) -> Any:  # noqa: ASYNC109
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        return json.loads(await self.line(timeout))

    async def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()


class PlainAppservice:
    """The smallest appservice: acknowledges transactions and stamps their arrival."""

    def __init__(self) -> None:
        self.stamps: list[Stamp] = []
        self.app = web.Application()
        for prefix in ("/_matrix/app/v1", ""):
            self.app.router.add_put(prefix + "/transactions/{txn}", self.txn)
        self.app.router.add_post("/_matrix/app/v1/ping", self.ok)
        self.runner: web.AppRunner | None = None

    async def txn(self, request: web.Request) -> web.Response:
        t = now()
        self.stamps.append((t, await request.read()))
        return web.json_response({})

    async def ok(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def start(self, port: int) -> None:
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def messages_in(stamps: list[Stamp], tag: str) -> list[tuple[float, str, str, str]]:
    """(arrival, room, sender, body) of the tagged messages, in stream order."""
    out = []
    prefix = tag + " "
    for t, raw in stamps:
        try:
            body = json.loads(raw)
        except ValueError:
            continue
        for e in body.get("events", []):
            if e.get("type") != "m.room.message":
                continue
            text = (e.get("content") or {}).get("body", "")
            if isinstance(text, str) and text.startswith(prefix):
                out.append((t, e["room_id"], e["sender"], text))
    return out


def count_in(stamps: list[Stamp], tag: str) -> int:
    """Roughly how many tagged messages arrived (cheap: no JSON parsing while measuring)."""
    needle = (tag + " ").encode()
    return sum(raw.count(needle) for _, raw in stamps)


def order_and_loss(keys: list[tuple[int, int]], k: int, n: int) -> tuple[int, int, int]:
    """(lost, duplicates, order violations) of (room index, seq) in arrival order."""
    last = [-1] * k
    violations = 0
    for ri, seq in keys:
        if seq < last[ri]:
            violations += 1
        last[ri] = max(last[ri], seq)
    unique = set(keys)
    return k * n - len(unique), len(keys) - len(unique), violations


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (
        f"p50 {pct(values, 50) * 1000:.2f} ms, p99 {pct(values, 99) * 1000:.2f} ms, "
        f"max {max(values) * 1000:.2f} ms"
    )


class Hs:
    """Setup calls to Synapse."""

    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url, self.http = url, http

    async def call(
        self, method: str, path: str, body: Any = None, token: str = AS_TOKEN, **params: str
    ) -> Any:
        async with self.http.request(
            method,
            self.url + "/_matrix/client/v3" + path,
            json=body if body is not None else {},
            params=params,
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path} -> {resp.status} {data}")
            return data

    async def register(self, localpart: str, token: str) -> None:
        try:
            await self.call(
                "POST",
                "/register",
                {"type": "m.login.application_service", "username": localpart},
                token=token,
            )
        except RuntimeError as e:
            if "M_USER_IN_USE" not in str(e):
                raise


def write_registration(
    path: Path, as_id: str, port: int, as_token: str, hs_token: str, bot: str, users: str
) -> None:
    from ruamel.yaml import YAML

    reg = {
        "id": as_id,
        "url": f"http://127.0.0.1:{port}",
        "as_token": as_token,
        "hs_token": hs_token,
        "sender_localpart": bot,
        "rate_limited": False,
        "receive_ephemeral": True,
        "namespaces": {
            "users": [
                {"exclusive": True, "regex": f"@{bot}:{DOMAIN}"},
                {"exclusive": True, "regex": f"@{users}.*:{DOMAIN}"},
            ],
            "aliases": [{"exclusive": True, "regex": f"#{users}.*:{DOMAIN}"}],
            "rooms": [],
        },
    }
    with path.open("w") as f:
        YAML().dump(reg, f)


def write_bridge_config(
    path: Path, hs_url: str, as_port: int, db: Path, ircd_host: str, ircd_port: int
) -> None:
    from ruamel.yaml import YAML

    cfg = {
        "homeserver": {"address": hs_url, "domain": DOMAIN},
        "appservice": {
            "address": f"http://127.0.0.1:{as_port}",
            "hostname": "127.0.0.1",
            "port": as_port,
            "id": "mimi-bridge",
            "bot_username": "mimibot",
            "as_token": AS_TOKEN,
            "hs_token": HS_TOKEN,
            "database": f"sqlite://{db}",
        },
        "bridge": {
            "permissions": {DOMAIN: "user"},
            "credentials_key": "bench-credentials-key",
            "backfill_limit": 0,
        },
        "logging": {"level": "WARNING"},
        "connectors": {
            "irc": {
                "networks": {
                    NETID: {
                        "host": ircd_host,
                        "port": ircd_port,
                        "casemapping": "ascii",
                        "bot": {"nick": "mimibench"},
                        "flood": {"burst": 1_000_000, "rate": 1_000_000},
                        "connects_per_second": 100,
                    }
                }
            }
        },
    }
    with path.open("w") as f:
        YAML().dump(cfg, f)


def report(text: str = "") -> None:
    print(text, flush=True)


async def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:  # noqa: ASYNC109
    deadline = now() + timeout
    while not pred():
        if now() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def thread_cpu() -> dict[str, tuple[float, float]]:
    """User and system CPU seconds of each thread of this process, by thread name."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, tuple[float, float]] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        name = names.get(int(task.name), f"thread {task.name}")
        name = "ThreadPool" if name.startswith(("ThreadPoolExecutor", "asyncio_")) else name
        user, system = out.get(name, (0.0, 0.0))
        out[name] = (user + int(fields[11]) / tick, system + int(fields[12]) / tick)
    return out


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int | None = None) -> float:
    """Resident memory of a process (this one by default), MiB."""
    for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def print_memory_breakdown(pid: int) -> None:
    """Where an idle bridge's resident memory is: totals by kind and the largest mappings
    (read from /proc; --idle only)."""
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    print("  " + ", ".join(
        f"{k} {int(v.split()[0]) / 1024:.1f} MiB"
        for k, v in (line.split(":", 1) for line in rollup[1:])
        if k in ("Rss", "Anonymous", "Shared_Clean", "Private_Clean", "Private_Dirty")
    ))  # fmt: skip
    sizes: Counter[str] = Counter()
    name = "?"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):
            name = head[5] if len(head) > 5 else "[anon]"
        elif head and head[0] == "Rss:":
            sizes[name] += int(head[1])
    for mapping, kib in sizes.most_common(12):
        print(f"  {kib / 1024:6.1f} MiB  {mapping}")


def system_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class Meter:
    """CPU used by Synapse and by this process (the bridge), and how busy the machine was."""

    def __init__(self, synapse_pid: int) -> None:
        self.pid = synapse_pid

    def __enter__(self) -> Meter:
        self.syn0, self.own0, self.sys0 = proc_cpu(self.pid), cpu_seconds(), system_busy()
        self.threads0 = thread_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.synapse = proc_cpu(self.pid) - self.syn0
        self.own = cpu_seconds() - self.own0
        # Threads that ended during the phase are not in either snapshot; the total above has them.
        self.threads = {
            name: (
                user - self.threads0.get(name, (0.0, 0.0))[0],
                sys_ - self.threads0.get(name, (0.0, 0.0))[1],
            )
            for name, (user, sys_) in thread_cpu().items()
        }
        busy, total = system_busy()
        self.busy = (busy - self.sys0[0]) / max(1, total - self.sys0[1])


class Phase:
    """Results of one kind of run, summed over rounds."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.n = 0
        self.wall = 0.0
        self.rates: list[float] = []
        self.lost = self.dup = self.viol = self.errors = 0
        self.latency: dict[str, list[float]] = {}
        self.synapse_cpu = self.own_cpu = 0.0
        self.threads: Counter[str] = Counter()
        self.busy: list[float] = []

    def add(self, n: int, wall: float, loss: tuple[int, int, int], meter: Meter) -> float:
        self.n += n
        self.wall += wall
        self.rates.append(n / wall)
        self.lost += loss[0]
        self.dup += loss[1]
        self.viol += loss[2]
        self.synapse_cpu += meter.synapse
        self.own_cpu += meter.own
        for name, (user, system) in meter.threads.items():
            self.threads[f"{name} user"] += user
            self.threads[f"{name} system"] += system
        self.busy.append(meter.busy)
        return n / wall

    def lat(self, key: str, values: list[float]) -> None:
        self.latency.setdefault(key, []).extend(values)

    @property
    def rate(self) -> float:
        return self.n / self.wall if self.wall else 0.0

    def describe(self, who: str) -> list[str]:
        lines = [
            f"{self.name}: {self.rate:.1f} msg/s over {self.n} messages (rounds: "
            + ", ".join(f"{r:.0f}" for r in self.rates)
            + f"); lost {self.lost}, duplicates {self.dup}, order violations {self.viol}"
            + (f", send errors {self.errors}" if self.errors else "")
        ]
        for key, values in self.latency.items():
            lines.append(f"   {key}: {ms(values)}")
        lines.append(
            f"   CPU per message: Synapse {self.synapse_cpu / self.n * 1000:.1f} ms, {who} "
            f"{self.own_cpu / self.n * 1000:.1f} ms; machine "
            f"{statistics.mean(self.busy) * 100:.0f} % busy"
        )
        by_thread = [f"{k} {v / self.n * 1000:.2f}" for k, v in self.threads.most_common() if v > 0]
        if by_thread:
            lines.append(f"   {who} CPU per message by thread (ms): " + ", ".join(by_thread))
        return lines


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.k = args.k
        self.rounds = args.rounds
        self.per_room = max(1, args.n // (args.k * args.rounds))
        self.n = self.k * self.per_room  # per round
        self.profile = cProfile.Profile(time.thread_time) if args.profile else None
        self.idle_only = args.idle
        self.tmp = Path(tempfile.mkdtemp(prefix="irc-throughput-"))
        self.workers: list[Worker] = []
        self.bridge: Any = None
        self.plain = PlainAppservice()
        self.phases = {
            key: Phase(label)
            for key, label in (
                ("A1", "A1. Synapse ceiling, Matrix user -> appservice"),
                ("B", "B.  Matrix -> IRC through the bridge"),
                ("A2", "A2. Synapse ceiling, appservice ghost -> appservice"),
                ("C", "C.  IRC -> Matrix through the bridge, IRC client unthrottled"),
                ("D", "D.  IRC -> Matrix through the bridge, IRC client paced"),
            )
        }

    def meter(self) -> Meter:
        assert self.synapse.process is not None
        return Meter(self.synapse.process.pid)

    def profiling(self, on: bool) -> None:
        if self.profile is not None:
            (self.profile.enable if on else self.profile.disable)()

    async def standalone_rss(self) -> float:
        """Idle RSS of the bridge run as the ``mimi-bridge`` command with the bench's config
        (this process's bridge stopped): once it answers and its CPU use has settled. Its
        modules are byte-compiled first, as ``pip install`` does: compiling them at import
        (a source tree run with PYTHONDONTWRITEBYTECODE) leaves a few MiB behind."""
        for package in ("bridge", "connectors"):
            await asyncio.to_thread(compileall.compile_dir, str(ROOT / package), quiet=1)
        log = (self.tmp / "standalone.log").open("ab")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "-c", str(self.tmp / "config.yaml"),
            stdout=log, stderr=log, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{self.as_port}/_matrix/mau/live"
            async with aiohttp.ClientSession() as http:
                deadline = now() + 60
                while True:
                    try:
                        async with http.get(url) as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    if now() > deadline or proc.returncode is not None:
                        raise RuntimeError(f"the standalone bridge did not start: {log.name}")
                    await asyncio.sleep(0.1)
            # Connected and quiet: less than 5 ms of CPU in a second (30 s at most).
            last = proc_cpu(proc.pid)
            for _ in range(30):
                await asyncio.sleep(1.0)
                cpu = proc_cpu(proc.pid)
                if cpu - last < 0.005:
                    break
                last = cpu
            if self.idle_only:
                print_memory_breakdown(proc.pid)
            return rss_mib(proc.pid)
        finally:
            proc.terminate()
            await proc.wait()
            log.close()

    # --- setup ----------------------------------------------------------------------------------

    def write_config(self) -> None:
        write_bridge_config(
            self.tmp / "config.yaml",
            self.synapse.url,
            self.as_port,
            self.tmp / "bridge.db",
            self.ircd.host,
            self.ircd.port,
        )

    async def start_bridge(self) -> None:
        from bridge.appservice.server import AppserviceServer
        from bridge.bridge import Bridge
        from bridge.config import load as load_config

        self.stamps: list[Stamp] = []
        stamps = self.stamps
        original_put = AppserviceServer.put_transaction

        async def stamped_put(server: Any, request: web.Request) -> web.Response:
            stamps.append((now(), await request.read()))
            return await original_put(server, request)

        AppserviceServer.put_transaction = stamped_put  # type: ignore[method-assign,assignment]
        self.bridge = bridge = Bridge(load_config(self.tmp / "config.yaml"))
        await bridge.start()
        connector: Any = bridge.connectors["irc"]
        self.net = net = connector.networks[NETID]
        # When a line reaches the bridge's IRC connection; when the bridge PUTs an event.
        self.irc_in: dict[str, float] = {}
        self.put_at: dict[str, float] = {}
        self.put_done: dict[str, float] = {}
        irc_in, put_at, put_done = self.irc_in, self.put_at, self.put_done
        self.puts_of: Counter[str] = Counter()  # finished PUTs per tag
        puts_of = self.puts_of
        original_line = net.irc_line

        def line_hook(conn: Any, line: Any) -> None:
            if line.command == "PRIVMSG" and len(line.params) > 1:
                irc_in[line.params[1]] = now()
            original_line(conn, line)

        net.irc_line = line_hook
        original_send = bridge.hs.send

        async def send_hook(
            room_id: str, event_type: str, content: dict[str, Any], **kw: Any
        ) -> str:
            body = content.get("body")
            if isinstance(body, str):
                put_at[body] = now()
            try:
                return await original_send(room_id, event_type, content, **kw)
            finally:
                if isinstance(body, str):
                    put_done[body] = now()
                    puts_of[body.split(" ", 1)[0]] += 1

        bridge.hs.send = send_hook  # type: ignore[method-assign]

    async def setup(self, hs: Hs) -> None:
        self.synapse.register_user("bencher", "bencher-password")
        self.user_token = self.synapse.login("bencher", "bencher-password")
        self.user_id = f"@bencher:{DOMAIN}"
        await hs.call(
            "PUT",
            f"/profile/{q(self.user_id)}/displayname",
            {"displayname": "Bencher"},
            token=self.user_token,
        )
        # Rooms of the plain appservice, with the same local members as the portals: the
        # user, the appservice's bot and two of its ghosts.
        self.plain_ghost = f"@plain_ghost:{DOMAIN}"
        for g in ("plain_ghost", "plain_other"):
            await hs.register(g, PLAIN_AS_TOKEN)
        self.rooms_a = []
        for _ in range(self.k):
            created = await hs.call(
                "POST", "/createRoom", {"preset": "public_chat"}, token=self.user_token
            )
            room = created["room_id"]
            for member in ("plainbot", "plain_ghost", "plain_other"):
                await hs.call(
                    "POST", f"/join/{q(room)}", token=PLAIN_AS_TOKEN, user_id=f"@{member}:{DOMAIN}"
                )
            self.rooms_a.append(room)
        # Portals: K channels with an IRC observer and an IRC sender in each, the Matrix user
        # joined through the aliases.
        channels = [f"#bench{i}" for i in range(self.k)]
        spec = {"host": self.ircd.host, "port": self.ircd.port, "channels": channels}
        self.observer = await Worker.start("irc", {**spec, "nick": IRC_OBSERVER})
        self.sender = await Worker.start("irc", {**spec, "nick": IRC_SENDER})
        self.workers += [self.observer, self.sender]
        assert (await self.observer.line()).strip() == "READY"
        assert (await self.sender.line()).strip() == "READY"
        self.rooms = []
        for chan in channels:
            alias = f"#irc_{NETID}_{chan}:{DOMAIN}"
            joined = await hs.call("POST", f"/join/{q(alias)}", token=self.user_token)
            self.rooms.append(joined["room_id"])
        pool = self.net.pool

        def puppet_joined() -> bool:
            puppet = pool.get(self.user_id)
            return puppet is not None and all(c in puppet.conn.joined for c in channels)

        await wait_until(puppet_joined, 30, "the puppet joining every channel")
        # Warm-up: the IRC sender's ghost joins every room.
        await self.sender.ask("SEND W 1 0")
        await wait_until(lambda: self.puts_of["W"] >= self.k, 30, "warm-up")
        await asyncio.sleep(1.0)

    # --- phases ---------------------------------------------------------------------------------

    async def ceiling(self, key: str, r: int) -> float:
        """A1 or A2: Synapse alone, the plain appservice listening."""
        tag = f"{key}.{r}"
        self.plain.stamps.clear()
        spec = {
            "url": self.synapse.url,
            "token": self.user_token if key == "A1" else PLAIN_AS_TOKEN,
            "user_id": None if key == "A1" else self.plain_ghost,
            "rooms": self.rooms_a,
            "n": self.per_room,
            "tag": tag,
        }
        with self.meter() as meter:
            w = await Worker.start("matrix-send", spec)
            sent = json.loads(await w.line())
            await w.close()
            await wait_until(
                lambda: count_in(self.plain.stamps, tag) >= self.n,
                120,
                f"{tag} events at the appservice",
            )
        got = messages_in(self.plain.stamps, tag)
        index = {room: i for i, room in enumerate(self.rooms_a)}
        keys = [(index[room], int(b.split()[2])) for _, room, _, b in got]
        phase = self.phases[key]
        phase.errors += sent["errors"]
        phase.lat("one send request", sent["took"])
        recv = {b: t for t, _, _, b in got}
        starts = {f"{tag} {ri} {seq}": t for t, ri, seq in sent["started"]}
        phase.lat("send -> event at the appservice", [recv[b] - starts[b] for b in recv])
        loss = order_and_loss(keys, self.k, self.per_room)
        return phase.add(len(set(keys)), got[-1][0] - sent["t0"], loss, meter)

    async def matrix_to_irc(self, r: int) -> float:
        tag = f"B.{r}"
        self.stamps.clear()
        with self.meter() as meter:
            self.profiling(True)
            spec = {
                "url": self.synapse.url,
                "token": self.user_token,
                "rooms": self.rooms,
                "n": self.per_room,
                "tag": tag,
            }
            w = await Worker.start("matrix-send", spec)
            sent = json.loads(await w.line())
            await w.close()
            got = await self.observer.ask(f"COLLECT {tag} {self.n} 120")
            self.profiling(False)
        recv_at: dict[str, float] = {}
        for t, _, _, body in messages_in(self.stamps, tag):
            recv_at.setdefault(body, t)
        starts = {f"{tag} {ri} {seq}": t for t, ri, seq in sent["started"]}
        keys = [(int(text.split()[1]), int(text.split()[2])) for _, _, text in got]
        phase = self.phases["B"]
        phase.errors += sent["errors"]
        phase.lat("one send request", sent["took"])
        phase.lat(
            B_ADDED,
            [t - recv_at[text] for t, _, text in got if text in recv_at],
        )
        phase.lat(
            "end to end (Matrix send -> PRIVMSG at the IRC client)",
            [t - starts[text] for t, _, text in got if text in starts],
        )
        loss = order_and_loss(keys, self.k, self.per_room)
        wall = got[-1][0] - sent["t0"] if got else float("inf")
        return phase.add(len(set(keys)), wall, loss, meter)

    async def irc_to_matrix(self, key: str, r: int, rate: float) -> float:
        tag = f"{key}.{r}"
        self.stamps.clear()
        k, per_room, n = self.k, self.per_room, self.n
        with self.meter() as meter:
            self.profiling(key == "C")
            sent = await self.sender.ask(f"SEND {tag} {per_room} {rate}")
            await wait_until(
                lambda: self.puts_of[tag] >= n,
                300,
                f"{tag}: the bridge sending everything",
            )
            await wait_until(
                lambda: (
                    len(messages_in(self.stamps[-n:], tag)) >= n
                    or len(messages_in(self.stamps, tag)) >= n
                ),
                30,
                f"{tag}: every event back at the appservice",
            )
            self.profiling(False)
        room_index = {room: i for i, room in enumerate(self.rooms)}
        echoes = [m for m in messages_in(self.stamps, tag) if m[1] in room_index]
        keys = [(int(b.split()[1]), int(b.split()[2])) for _, _, _, b in echoes]
        sent_at = {f"{tag} {ci} {seq}": t for t, ci, seq in sent["sent"]}
        irc_in, put_at, put_done = self.irc_in, self.put_at, self.put_done
        # The bridge's own time per message: from when it could start on it (the line arrived
        # and the room's previous message was sent: one request at a time per room, for
        # order) until its PUT.
        own = []
        for ci in range(k):
            prev_done = 0.0
            for seq in range(per_room):
                b = f"{tag} {ci} {seq}"
                if b in put_at and b in irc_in:
                    own.append(put_at[b] - max(irc_in[b], prev_done))
                    prev_done = put_done.get(b, prev_done)
        phase = self.phases[key]
        phase.lat(
            "one send request from the bridge",
            [put_done[b] - put_at[b] for b in sent_at if b in put_done and b in put_at],
        )
        phase.lat(C_ADDED, own)
        phase.lat(
            "line at the bridge -> PUT, waiting for the room's earlier sends included",
            [put_at[b] - irc_in[b] for b in sent_at if b in put_at and b in irc_in],
        )
        phase.lat(
            "end to end (IRC client sends -> event at the appservice)",
            [t - sent_at[b] for t, _, _, b in echoes if b in sent_at],
        )
        loss = order_and_loss(keys, k, per_room)
        wall = echoes[-1][0] - sent["t0"] if echoes else float("inf")
        return phase.add(len(set(keys)), wall, loss, meter)

    # --- the run ----------------------------------------------------------------------------------

    async def run(self) -> None:
        from tests.harness.ircd import start_ngircd
        from tests.harness.ports import free_port
        from tests.harness.synapse import start_synapse

        logging.basicConfig(level=logging.WARNING)
        self.ircd = start_ngircd(self.tmp / "ngircd", penalty=0)
        self.as_port, plain_port = free_port(), free_port()
        write_registration(self.tmp / "bridge.yaml", "mimi-bridge", self.as_port, AS_TOKEN,
                           HS_TOKEN, "mimibot", "irc_")  # fmt: skip
        write_registration(self.tmp / "plain.yaml", "plain", plain_port, PLAIN_AS_TOKEN,
                           PLAIN_HS_TOKEN, "plainbot", "plain_")  # fmt: skip
        self.synapse = start_synapse(
            self.tmp / "synapse", [self.tmp / "bridge.yaml", self.tmp / "plain.yaml"]
        )
        try:
            await self.plain.start(plain_port)
            self.write_config()
            self.rss_fresh = await self.standalone_rss()
            if self.idle_only:
                print(f"Bridge RSS idle (mimi-bridge on its own): {self.rss_fresh:.1f} MiB")
                return
            await self.start_bridge()
            async with aiohttp.ClientSession() as http:
                await self.setup(Hs(self.synapse.url, http))
            self.rss_before = rss_mib()
            await self._run()
            await asyncio.sleep(2.0)
            self.rss_after = rss_mib()
            await self.bridge.stop()
            self.bridge = None
            self.rss_used = await self.standalone_rss()
            self.summary()
        finally:
            if self.bridge is not None:
                await self.bridge.stop()
            for w in self.workers:
                await w.close()
            await self.plain.stop()
            self.synapse.stop()
            self.ircd.stop()

    async def _run(self) -> None:
        report(
            f"Loopback, {os.cpu_count()} CPUs. Synapse (SQLite, rate limits off) with two "
            "appservices: the bridge (in this process, SQLite, IRC flood control off) and a "
            "plain listener for the ceiling; ngircd with MaxPenaltyTime=0."
        )
        report(
            f"{self.rounds} rounds of A1, B, A2, C; each {self.n} messages over {self.k} "
            f"rooms/channels ({self.per_room} each), one request at a time per room."
        )
        report()
        measured = self.phases
        for r in range(-1, self.rounds):
            if r < 0:  # warm-up round (first messages in new rooms, caches): not counted
                self.phases = {key: Phase(key) for key in measured}
            else:
                self.phases = measured
            a1 = await self.ceiling("A1", r)
            b = await self.matrix_to_irc(r)
            a2 = await self.ceiling("A2", r)
            c = await self.irc_to_matrix("C", r, 0.0)
            report(
                f"{'warm-up' if r < 0 else f'round {r + 1}'}: A1 {a1:.0f}, "
                f"B {b:.0f} ({b / a1 * 100:.0f} %), A2 {a2:.0f}, "
                f"C {c:.0f} ({c / a2 * 100:.0f} % of A2) msg/s"
            )
        self.phases = measured
        paced = self.phases["A2"].rate / 2
        await self.irc_to_matrix("D", 0, paced)

    def summary(self) -> None:
        report()
        paced = self.phases["A2"].rate / 2
        ph = self.phases
        for key, who in (
            ("A1", "listener"),
            ("B", "bridge"),
            ("A2", "listener"),
            ("C", "bridge"),
        ):
            for line in ph[key].describe(who):
                report(line)
        ph["D"].name += f" at {paced:.0f} msg/s (half of A2)"
        for line in ph["D"].describe("bridge"):
            report(line)
        report()
        b_ratio = ph["B"].rate / ph["A1"].rate
        c_ratio = ph["C"].rate / ph["A2"].rate
        b_p99 = pct(ph["B"].latency[B_ADDED], 99)
        c_key = C_ADDED
        c_p99 = pct(ph["C"].latency[c_key], 99)
        d_p99 = pct(ph["D"].latency[c_key], 99)
        report("Summary")
        report(
            f"  Matrix -> IRC: {ph['B'].rate:.1f} msg/s = {b_ratio * 100:.0f} % of Synapse's "
            f"{ph['A1'].rate:.1f} msg/s; p99 added latency {b_p99 * 1000:.2f} ms"
        )
        report(
            f"  IRC -> Matrix: {ph['C'].rate:.1f} msg/s = {c_ratio * 100:.0f} % of Synapse's "
            f"{ph['A2'].rate:.1f} msg/s; p99 added latency "
            f"{c_p99 * 1000:.2f} ms saturated, {d_p99 * 1000:.2f} ms paced"
        )
        report(
            f"  Bridge CPU per message (user + system): Matrix -> IRC "
            f"{ph['B'].own_cpu / ph['B'].n * 1000:.2f} ms, IRC -> Matrix "
            f"{ph['C'].own_cpu / ph['C'].n * 1000:.2f} ms unthrottled, "
            f"{ph['D'].own_cpu / ph['D'].n * 1000:.2f} ms paced"
            + (" (cProfile on in B and C)" if self.profile is not None else "")
        )
        report(
            f"  Bridge RSS idle (mimi-bridge on its own): {self.rss_fresh:.1f} MiB fresh, "
            f"{self.rss_used:.1f} MiB after the rounds ({self.k} portals); this process "
            f"(bridge and bench): {self.rss_before:.1f} MiB before, {self.rss_after:.1f} MiB "
            "after"
        )
        report(
            "  Targets: >= 90 % of Synapse's ceiling, p99 added latency < 10 ms, "
            "<= 0.5 ms CPU per message, < 45 MiB idle."
        )
        if self.profile is not None:
            stats = pstats.Stats(self.profile)
            stats.sort_stats("tottime").print_stats(70)
            stats.sort_stats("cumulative").print_stats(90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2400, help="messages per kind of run, in all")
    parser.add_argument("-k", type=int, default=4, help="rooms/channels used at once")
    parser.add_argument("-r", "--rounds", type=int, default=3, help="rounds of A1, B, A2, C")
    parser.add_argument("--profile", action="store_true", help="cProfile the bridge in B and C")
    parser.add_argument("--idle", action="store_true", help="only the idle RSS, with a breakdown")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker, json.loads(args.spec))
        return
    asyncio.run(Bench(args).run())


if __name__ == "__main__":
    main()
