"""Throughput and bridge CPU per message in an encrypted IRC portal beside an unencrypted one,
in the same run, on loopback.

Starts ngircd and Synapse (tests/harness, appservice encryption extensions on) and the bridge
in this process (SQLite, IRC flood control off, ``bridge.encryption.allow``). Two channels,
``#plain`` and ``#crypt``; a Matrix user with a real E2EE client (matrix-nio, in its own
process) joins both portals, and the bot turns encryption on in the second. The IRC users (an
observer in both channels, a sender in each) run in their own processes too, so this
process's CPU is the bridge's. Rounds, interleaved so both modes share the machine's load:

M->I  the Matrix user sends N messages into the portal, one request at a time (nio encrypts
      in #crypt); time until the IRC observer has them all.
I->M  the channel's IRC sender sends N lines as fast as it can; time until the Matrix user's
      client has them all (decrypted in #crypt).

Reported per mode and direction: msg/s and the bridge's CPU per message, and the ratio of
encrypted to unencrypted. Figures only, no assertions. Goal: encrypted >= 0.8x unencrypted.

    /work/main/.venv/bin/python bench/e2ee_throughput.py [-n 200] [-r 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from irc_throughput import (  # noqa: E402
    AS_TOKEN,
    DOMAIN,
    HS_TOKEN,
    NETID,
    Worker,
    cpu_seconds,
    now,
    report,
    wait_until,
    write_bridge_config,
)

MEGOLM = {"algorithm": "m.megolm.v1.aes-sha2"}
MODES = ("plain", "crypt")
GOAL = 0.8


# --- the Matrix user (a separate process) ---------------------------------------------------------


async def worker_nio(spec: dict[str, Any]) -> None:
    """Commands on stdin, one JSON answer per line: ``JOIN alias``, ``ENCRYPTED room``,
    ``SEND room tag n``, ``COLLECT room tag n timeout``; EOF quits."""
    from nio import AsyncClient, AsyncClientConfig, RoomMessageText, RoomSendResponse

    client = AsyncClient(
        spec["url"],
        spec["user_id"],
        store_path=spec["store"],
        config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False),
    )
    seen: dict[tuple[str, str], list[float]] = {}
    changed = asyncio.Event()

    async def on_text(room: Any, event: Any) -> None:
        tag = event.body.split(" ", 1)[0]
        seen.setdefault((room.room_id, tag), []).append(now())
        changed.set()

    await client.login(spec["password"], device_name="bench")
    client.add_event_callback(on_text, RoomMessageText)
    await client.sync(timeout=0, full_state=True)
    if client.should_upload_keys:
        await client.keys_upload()
    syncing = asyncio.create_task(client.sync_forever(timeout=30000))
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while True:
        raw = await stdin.readline()
        if not raw:
            break
        cmd, *args = raw.decode().split()
        answer: Any = None
        if cmd == "JOIN":
            resp = await client.join(args[0])
            room_id = getattr(resp, "room_id", "")
            await until(lambda rid=room_id: rid in client.rooms)
            answer = room_id
        elif cmd == "ENCRYPTED":
            await until(lambda rid=args[0]: rid in client.rooms and client.rooms[rid].encrypted)
            answer = True
        elif cmd == "SEND":
            room_id, tag, n = args[0], args[1], int(args[2])
            t0 = now()
            errors = 0
            for seq in range(n):
                body = {"msgtype": "m.text", "body": f"{tag} 0 {seq}"}
                resp = await client.room_send(
                    room_id, "m.room.message", body, ignore_unverified_devices=True
                )
                errors += not isinstance(resp, RoomSendResponse)
            answer = {"t0": t0, "t1": now(), "errors": errors}
        elif cmd == "COLLECT":
            key, n = (args[0], args[1]), int(args[2])
            deadline = now() + float(args[3])
            while len(seen.get(key, [])) < n and now() < deadline:
                changed.clear()
                try:
                    await asyncio.wait_for(changed.wait(), max(0.01, deadline - now()))
                except TimeoutError:
                    break
            answer = seen.get(key, [])
        print(json.dumps(answer), flush=True)
    syncing.cancel()
    await client.close()


async def until(pred: Callable[..., bool]) -> None:
    """The client's sync thread of state changes has no event to wait on: poll it."""
    await wait_until(pred, 60, "the client's sync")


class NioWorker(Worker):
    @classmethod
    async def start_nio(cls, spec: dict[str, Any]) -> NioWorker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--worker",
            "nio",
            json.dumps(spec),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,
        )
        return cls(proc)


# --- orchestration --------------------------------------------------------------------------------


def write_registration(path: Path, port: int) -> None:
    from ruamel.yaml import YAML

    reg = {
        "id": "mimi-bridge",
        "url": f"http://127.0.0.1:{port}",
        "as_token": AS_TOKEN,
        "hs_token": HS_TOKEN,
        "sender_localpart": "mimibot",
        "rate_limited": False,
        "receive_ephemeral": True,
        "org.matrix.msc3202": True,
        "io.element.msc4190": True,
        "namespaces": {
            "users": [
                {"exclusive": True, "regex": f"@mimibot:{DOMAIN}"},
                {"exclusive": True, "regex": f"@irc_.*:{DOMAIN}"},
            ],
            "aliases": [{"exclusive": True, "regex": f"#irc_.*:{DOMAIN}"}],
            "rooms": [],
        },
    }
    with path.open("w") as f:
        YAML().dump(reg, f)


class Result:
    def __init__(self) -> None:
        self.rates: list[float] = []
        self.cpu_ms: list[float] = []
        self.lost = 0

    def add(self, n: int, got: int, wall: float, cpu: float) -> float:
        rate = got / wall if wall > 0 else float("nan")
        self.rates.append(rate)
        self.cpu_ms.append(cpu / max(1, got) * 1000)
        self.lost += n - got
        return rate

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpu_ms)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.n, self.rounds = args.n, args.rounds
        self._tmp = tempfile.TemporaryDirectory(prefix="mimi-e2ee-bench-")
        self.tmp = Path(self._tmp.name)
        self.workers: list[Worker] = []
        self.results = {(m, d): Result() for m in MODES for d in ("M->I", "I->M")}
        self.bridge: Any = None

    async def run(self) -> None:
        from ruamel.yaml import YAML

        from bridge.bridge import Bridge
        from bridge.config import load as load_config
        from tests.harness.ircd import start_ngircd
        from tests.harness.ports import free_port
        from tests.harness.synapse import start_synapse

        logging.basicConfig(level=logging.WARNING)
        self.ircd = start_ngircd(self.tmp / "ngircd", penalty=0)
        as_port = free_port()
        write_registration(self.tmp / "bridge.yaml", as_port)
        self.synapse = start_synapse(self.tmp / "synapse", [self.tmp / "bridge.yaml"])
        try:
            cfg_path = self.tmp / "config.yaml"
            write_bridge_config(cfg_path, self.synapse.url, as_port, self.tmp / "bridge.db",
                                self.ircd.host, self.ircd.port)  # fmt: skip
            yaml = YAML()
            cfg = yaml.load(cfg_path.read_text())
            cfg["bridge"]["encryption"] = {"allow": True}
            with cfg_path.open("w") as f:
                yaml.dump(cfg, f)
            self.bridge = Bridge(load_config(cfg_path))
            await self.bridge.start()
            await self.setup()
            await self.measure()
        finally:
            if self.bridge is not None:
                await self.bridge.stop()
            for w in self.workers:
                await w.close()
            self.synapse.stop()
            self.ircd.stop()

    async def setup(self) -> None:
        self.synapse.register_user("bencher", "bencher-password")
        (self.tmp / "nio").mkdir()
        self.nio = await NioWorker.start_nio(
            {
                "url": self.synapse.url,
                "user_id": f"@bencher:{DOMAIN}",
                "password": "bencher-password",
                "store": str(self.tmp / "nio"),
            }
        )
        self.workers.append(self.nio)
        spec = {"host": self.ircd.host, "port": self.ircd.port}
        self.observer = await Worker.start(
            "irc", {**spec, "nick": "benchobs", "channels": ["#plain", "#crypt"]}
        )
        self.senders = {
            m: await Worker.start("irc", {**spec, "nick": f"send{m}", "channels": [f"#{m}"]})
            for m in MODES
        }
        self.workers += [self.observer, *self.senders.values()]
        for w in [self.nio, self.observer, *self.senders.values()]:
            assert (await w.line()).strip() == "READY"
        self.rooms: dict[str, str] = {}
        for m in MODES:
            self.rooms[m] = await self.nio.ask(f"JOIN #irc_{NETID}_#{m}:{DOMAIN}")
        await self.bridge.hs.send_state(self.rooms["crypt"], "m.room.encryption", MEGOLM)
        await self.nio.ask(f"ENCRYPTED {self.rooms['crypt']}")
        pool = self.bridge.connectors["irc"].networks[NETID].pool
        user = f"@bencher:{DOMAIN}"

        def puppet_joined() -> bool:
            puppet = pool.get(user)
            return puppet is not None and {"#plain", "#crypt"} <= set(puppet.conn.joined)

        await wait_until(puppet_joined, 60, "the puppet joining both channels")

    async def matrix_to_irc(self, mode: str, tag: str) -> float:
        cpu0 = cpu_seconds()
        sent = await self.nio.ask(f"SEND {self.rooms[mode]} {tag} {self.n}")
        got = await self.observer.ask(f"COLLECT {tag} {self.n} 120")
        cpu = cpu_seconds() - cpu0
        wall = (got[-1][0] if got else now()) - sent["t0"]
        return self.results[(mode, "M->I")].add(self.n, len(got), wall, cpu)

    async def irc_to_matrix(self, mode: str, tag: str) -> float:
        cpu0 = cpu_seconds()
        sent = await self.senders[mode].ask(f"SEND {tag} {self.n} 0")
        got = await self.nio.ask(f"COLLECT {self.rooms[mode]} {tag} {self.n} 120", timeout=200)
        cpu = cpu_seconds() - cpu0
        wall = (max(got) if got else now()) - sent["t0"]
        return self.results[(mode, "I->M")].add(self.n, len(got), wall, cpu)

    async def measure(self) -> None:
        report(
            f"Loopback; Synapse (SQLite, rate limits off), ngircd, the bridge in this process;"
            f" {self.rounds} rounds (after a warm-up) of {self.n} messages per mode and"
            " direction, one Matrix request at a time."
        )
        measured = self.results
        for r in range(-1, self.rounds):
            self.results = (
                {k: Result() for k in measured} if r < 0 else measured
            )  # the warm-up (ghosts joining, first group sessions) is not counted
            line = []
            for mode in MODES:
                a = await self.matrix_to_irc(mode, f"MI{mode}{r + 1}")
                b = await self.irc_to_matrix(mode, f"IM{mode}{r + 1}")
                line.append(f"{mode}: M->I {a:.0f}, I->M {b:.0f} msg/s")
            report(f"{'warm-up' if r < 0 else f'round {r + 1}'}: " + "; ".join(line))
        self.results = measured
        report()
        for d in ("M->I", "I->M"):
            p, c = self.results[("plain", d)], self.results[("crypt", d)]
            ratio = c.rate / p.rate
            report(
                f"{'Matrix -> IRC' if d == 'M->I' else 'IRC -> Matrix'}: unencrypted"
                f" {p.rate:.1f} msg/s, {p.cpu:.2f} ms bridge CPU/msg; encrypted {c.rate:.1f}"
                f" msg/s, {c.cpu:.2f} ms bridge CPU/msg; encrypted = {ratio:.2f}x"
                f" ({'meets' if ratio >= GOAL else 'misses'} the goal); lost {p.lost}/{c.lost}"
            )
        report(f"Goal: encrypted >= {GOAL}x unencrypted throughput.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=200, help="messages per mode, direction, round")
    parser.add_argument("-r", "--rounds", type=int, default=2, help="measured rounds")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker_nio(json.loads(args.spec)))
        return
    started = time.monotonic()
    asyncio.run(Bench(args).run())
    report(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
