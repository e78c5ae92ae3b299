"""Scale-out mode against the single-process bridge, in the same run, on loopback: one core and
three workers (processes) over NATS JetStream versus one bridge process, both on PostgreSQL,
Synapse and ngircd.

With ``--puppets P`` each mode first brings P Matrix users into C portals (``--channels``),
each user's join connecting their puppet (split over the workers in scale-out mode): the
time until the channels' member lists on IRC held every puppet, and the RSS each process
grew by per connection.

For each mode, in one portal: a Matrix user sends N numbered messages (one request at a time,
as a client that keeps order does) to an IRC user, then the IRC user sends N lines as fast as it
can to the Matrix user. Reported per direction: msg/s, p50/p99 latency (Matrix->IRC: the send
request's start to the PRIVMSG's arrival; IRC->Matrix: the line's send to the event's arrival
at the Matrix client's long-polling /sync), loss, duplicates and order violations; then
scale-out's figures as ratios of single-process ones, and the RSS of every process
(nats-server included). Figures only, no assertions. Keep N small on a shared machine.

    .venv/bin/python bench/scale_out.py [-n 200] [--workers 3] [--puppets 1000 --channels 100]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
)

from ruamel.yaml import YAML  # noqa: E402

from tests.bridge_process import BridgeProcess  # noqa: E402
from tests.conftest import AS_TOKEN, HS_TOKEN, write_config  # noqa: E402
from tests.harness.ircd import IrcServer, start_ngircd  # noqa: E402
from tests.harness.nats import start_nats  # noqa: E402
from tests.harness.ports import free_port  # noqa: E402
from tests.harness.postgres import start_postgres  # noqa: E402
from tests.harness.synapse import SynapseServer, start_synapse  # noqa: E402
from tests.irc.conftest import RawIRC  # noqa: E402
from tests.scale.processes import WorkerProcess, shared_out  # noqa: E402

CHANNEL = "#bench"  # + the mode's tag: each mode has a database, so a portal, of its own


def registration(path: Path, as_port: int) -> Path:
    reg = {
        "id": "mimi-bridge",
        "url": f"http://127.0.0.1:{as_port}",
        "as_token": AS_TOKEN,
        "hs_token": HS_TOKEN,
        "sender_localpart": "mimibot",
        "rate_limited": False,
        "namespaces": {
            "users": [
                {"exclusive": True, "regex": "@mimibot:localhost"},
                {"exclusive": True, "regex": "@irc_.*:localhost"},
            ],
            "aliases": [{"exclusive": True, "regex": "#irc_.*:localhost"}],
            "rooms": [],
        },
    }
    with path.open("w") as f:
        YAML().dump(reg, f)
    return path


def config(
    path: Path,
    synapse: SynapseServer,
    as_port: int,
    db: str,
    ircd: IrcServer,
    nats: str | None,
    puppets: int,
) -> Path:
    net = {
        "host": ircd.host,
        "port": ircd.port,
        "bot": {"nick": "benchbot"},
        "flood": {"burst": 1000, "rate": 1000},
        "connects_per_second": 200,
        "channels": [],
        "max_connections": max(1000, puppets + 10),
    }
    write_config(path, synapse, as_port, db, {"irc": {"networks": {"bench": net}}})
    yaml = YAML()
    cfg = yaml.load(path.read_text())
    cfg["logging"] = {"level": "INFO"}  # start-up is told at INFO
    if nats:
        cfg["scale"] = {"nats_url": nats}
    with path.open("w") as f:
        yaml.dump(cfg, f)
    return path


def rss_kib(pid: int | None) -> int:
    if pid is None:
        return 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def make_users(synapse: SynapseServer, count: int) -> list[Any]:
    """``count`` Matrix users named P0, P1... (their puppets' nicks P0[m], P1[m]...)."""
    limit = asyncio.Semaphore(8)

    async def one(i: int) -> Any:
        async with limit:
            client = await asyncio.to_thread(synapse.new_client, f"pup{i}")
            await client.set_displayname(f"P{i}")
            await client.close()  # thousands of idle sessions would weigh on the homeserver
            return client

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def populate(
    users: list[Any], ircd: IrcServer, channels: int, tag: str, pids: dict[str, int | None]
) -> dict[str, Any]:
    """Every user joins one of the portals (round robin): until the channels' member lists
    on IRC hold each puppet."""
    names = [f"#pop{tag}{c}" for c in range(channels)]
    observer = await irc_user(ircd, f"pop{tag}")
    before = {name: rss_kib(pid) for name, pid in pids.items()}
    limit = asyncio.Semaphore(16)
    began = time.monotonic()

    async def join(i: int, user: Any) -> None:
        async with limit:
            await user.join(f"#irc_bench_{names[i % channels]}:localhost")
            await user.close()

    joins = asyncio.gather(*(join(i, u) for i, u in enumerate(users)))
    wanted = {(f"P{i}[m]", names[i % channels].lower()) for i in range(len(users))}
    matrix_s = None
    found: set[tuple[str, str]] = set()
    end = time.monotonic() + 1800
    while time.monotonic() < end:
        if matrix_s is None and joins.done():
            joins.result()
            matrix_s = time.monotonic() - began
        found = await members(observer, names) & wanted
        if len(found) == len(wanted):
            break
        await asyncio.sleep(1)
    joined_s = time.monotonic() - began
    if matrix_s is None:
        await joins
        matrix_s = time.monotonic() - began
    await asyncio.sleep(2)  # the last connections settle
    after = {name: rss_kib(pid) for name, pid in pids.items()}
    await observer.close()
    return {
        "puppets": len(users),
        "joined": len(found),
        "matrix_s": matrix_s,
        "joined_s": joined_s,
        "grew_kib": {name: after[name] - before[name] for name in pids},
        "rss_kib": after,
    }


async def members(observer: RawIRC, channels: list[str]) -> set[tuple[str, str]]:
    """(nick, channel) of every member of the channels, by NAMES (no need to be in them)."""
    mark = len(observer.lines)
    for name in channels:
        observer.send(f"NAMES {name}")

    def answered() -> bool:
        ends = [ln for ln in observer.lines[mark:] if ln.command == "366"]
        return len(ends) >= len(channels)

    end = time.monotonic() + 60
    while not answered() and time.monotonic() < end:  # noqa: ASYNC110 (the server's answer)
        await asyncio.sleep(0.05)
    out = set()
    for ln in observer.lines[mark:]:
        if ln.command == "353":
            for nick in ln.param(-1).split():
                out.add((nick.lstrip("@+%"), ln.param(2).lower()))
    return out


async def irc_user(ircd: IrcServer, nick: str) -> RawIRC:
    """An IRC user, once the server answers (it may still be seeing thousands of puppets of
    the previous mode off)."""
    for _ in range(30):
        user = RawIRC(ircd.host, ircd.port, nick)
        try:
            return await user.connect()
        except (AssertionError, OSError):
            await user.close()  # its reader too
            await asyncio.sleep(2)
    raise RuntimeError(f"{ircd.host}:{ircd.port} does not register {nick}")


def show_population(name: str, pop: dict[str, Any]) -> None:
    n = pop["puppets"]
    print(
        f"{name:15} {pop['joined']}/{n} puppets on IRC {pop['joined_s']:.1f} s after the first"
        f" Matrix join (the {n} joins took {pop['matrix_s']:.1f} s)"
    )
    for proc, grew in pop["grew_kib"].items():
        print(
            f"{'':15}   {proc}: +{grew / 1024:.1f} MiB, {grew / n:.1f} KiB per puppet", flush=True
        )


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def measure(synapse: SynapseServer, ircd: IrcServer, n: int, tag: str) -> dict[str, Any]:
    channel = CHANNEL + tag
    carol = await irc_user(ircd, f"obs{tag}")
    await carol.join(channel)
    ann = synapse.new_client(f"bench{tag}")
    await ann.set_displayname(f"Bench{tag}")
    room = await ann.join(f"#irc_bench_{channel}:localhost")
    puppet = f"Bench{tag}[m]"
    await ann.send_text(room, "warm-up")
    await carol.expect(lambda ln: ln.nick == puppet and ln.param(1) == "warm-up", timeout=60)

    # Matrix -> IRC
    sent_at: dict[int, float] = {}
    began = time.monotonic()
    for i in range(n):
        sent_at[i] = time.monotonic()
        await ann.send_text(room, f"m2i {i}")

    def got_m2i() -> list[tuple[float, int]]:
        out = []
        for stamp, raw in carol.raw:
            text = raw.decode(errors="replace")
            if "PRIVMSG" in text and f":{puppet}!" in text and ":m2i " in text:
                out.append((stamp, int(text.rsplit("m2i ", 1)[1].strip())))
        return out

    end = time.monotonic() + 300
    while len({i for _, i in got_m2i()}) < n and time.monotonic() < end:  # noqa: ASYNC110 (polls what other processes did)
        await asyncio.sleep(0.1)
    arrivals = got_m2i()
    m2i_s = max((s for s, _ in arrivals), default=began) - began
    m2i_lat = [(s - sent_at[i]) * 1000 for s, i in arrivals if i in sent_at]
    m2i_order = [i for _, i in arrivals]

    # IRC -> Matrix: arrival at the Matrix client, seen through a long-polling /sync (the
    # events' origin_server_ts is the remote timestamp the bridge passes on, not arrival).
    seen_at: dict[int, float] = {}
    order: list[int] = []
    _, first = await ann.request("GET", "/_matrix/client/v3/sync", params={"timeout": "0"})
    since = first["next_batch"]

    async def follow() -> None:
        nonlocal since
        while len(seen_at) < n:
            params = {"since": since, "timeout": "30000"}
            _, body = await ann.request("GET", "/_matrix/client/v3/sync", params=params)
            stamp = time.time()
            since = body["next_batch"]
            timeline = body.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {})
            for e in timeline.get("events", []):
                text = str(e.get("content", {}).get("body", ""))
                if text.startswith("i2m "):
                    i = int(text.split()[1])
                    order.append(i)
                    seen_at.setdefault(i, stamp)

    follower = asyncio.create_task(follow())
    irc_sent: dict[int, float] = {}
    began_wall = time.time()
    for i in range(n):
        irc_sent[i] = time.time()
        carol.send(f"PRIVMSG {channel} :i2m {i}")
    assert carol.writer is not None
    await carol.writer.drain()
    try:
        await asyncio.wait_for(follower, 300)
    except TimeoutError:
        pass
    i2m_s = max(seen_at.values(), default=began_wall) - began_wall
    i2m_lat = [(t - irc_sent[i]) * 1000 for i, t in seen_at.items()]
    i2m_order = order
    await ann.close()
    await carol.close()

    def figures(secs: float, lat: list[float], order: list[int]) -> dict[str, float]:
        return {
            "msg_s": len(set(order)) / secs if secs > 0 else float("nan"),
            "p50_ms": pct(lat, 50),
            "p99_ms": pct(lat, 99),
            "lost": n - len(set(order)),
            "dup": len(order) - len(set(order)),
            "reordered": sum(1 for a, b in itertools.pairwise(order) if b < a),
        }

    return {
        "m2i": figures(m2i_s, m2i_lat, m2i_order),
        "i2m": figures(i2m_s, i2m_lat, i2m_order),
    }


def show(name: str, result: dict[str, Any]) -> None:
    for way, label in (("m2i", "Matrix->IRC"), ("i2m", "IRC->Matrix")):
        f = result[way]
        print(
            f"{name:15} {label}: {f['msg_s']:7.1f} msg/s  p50 {f['p50_ms']:6.1f} ms"
            f"  p99 {f['p99_ms']:6.1f} ms  lost {f['lost']} dup {f['dup']}"
            f" reordered {f['reordered']}"
        )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-n", type=int, default=200, help="messages each way (default 200)")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--puppets", type=int, default=0, help="Matrix users with a puppet each")
    ap.add_argument("--channels", type=int, default=100, help="portals they are spread over")
    args = ap.parse_args()
    populations: dict[str, dict[str, Any]] = {}
    work = Path(tempfile.mkdtemp(prefix="mimi-scale-bench-"))
    as_port = free_port()
    reg = registration(work / "registration.yaml", as_port)
    synapse = await asyncio.to_thread(start_synapse, work / "synapse", [reg])
    pg = await asyncio.to_thread(start_postgres, work / "pg")
    ircd = await asyncio.to_thread(start_ngircd, work / "ircd")
    nats = await asyncio.to_thread(start_nats, work / "nats")
    results: dict[str, dict[str, Any]] = {}
    try:
        # Single process.
        made = time.monotonic()
        users = await make_users(synapse, args.puppets)
        if users:
            print(f"{len(users)} Matrix users made in {time.monotonic() - made:.0f} s", flush=True)
        cfg = config(
            work / "single.yaml",
            synapse,
            as_port,
            pg.create_database("single"),
            ircd,
            None,
            args.puppets,
        )
        bridge = BridgeProcess(cfg, as_port)
        await bridge.start(until_started=True)
        if users:
            assert bridge.proc is not None
            pids = {"process": bridge.proc.pid}
            populations["single-process"] = await populate(users, ircd, args.channels, "s", pids)
            show_population("single-process", populations["single-process"])
        results["single-process"] = await measure(synapse, ircd, args.n, "s")
        assert bridge.proc is not None
        single_rss = rss_kib(bridge.proc.pid)
        await bridge.stop()

        # One core, N workers.
        cfg = config(
            work / "scale.yaml",
            synapse,
            as_port,
            pg.create_database("scale"),
            ircd,
            nats.url,
            args.puppets,
        )
        core = BridgeProcess(cfg, as_port)
        await core.start(until_started=True)
        workers = [WorkerProcess(cfg, str(i)) for i in range(args.workers)]
        for w in workers:
            await w.start()
        settle = time.monotonic() + 120
        while not shared_out(workers, "irc_bench") and time.monotonic() < settle:  # noqa: ASYNC110 (polls what other processes did)
            await asyncio.sleep(0.2)
        if users:
            assert core.proc is not None
            pids = {"core": core.proc.pid}
            pids |= {f"worker {w.name}": w.proc.pid if w.proc else None for w in workers}
            populations["scale-out"] = await populate(users, ircd, args.channels, "x", pids)
            show_population("scale-out", populations["scale-out"])
        results["scale-out"] = await measure(synapse, ircd, args.n, "x")
        assert core.proc is not None and nats.proc is not None
        rss = {"core": rss_kib(core.proc.pid), "nats-server": rss_kib(nats.proc.pid)}
        for w in workers:
            rss[f"worker {w.name}{' (bot)' if w.holds_main('irc_bench') else ''}"] = rss_kib(
                w.proc.pid if w.proc else None
            )
        await core.stop()
        for w in workers:
            await w.stop()
    finally:
        await asyncio.to_thread(nats.stop)
        await asyncio.to_thread(ircd.stop)
        await asyncio.to_thread(pg.stop)
        await asyncio.to_thread(synapse.stop)

    if populations:
        print(f"\n{args.puppets} puppets in {args.channels} channels\n")
        for name, pop in populations.items():
            show_population(name, pop)
        a, b = populations["scale-out"], populations["single-process"]
        print(f"  scale-out / single-process: joined time x{a['joined_s'] / b['joined_s']:.2f}")
    print(f"\n{args.n} messages each way, one portal, 1 core + {args.workers} workers\n")
    for name, result in results.items():
        show(name, result)
    print("\nscale-out / single-process:")
    for way, label in (("m2i", "Matrix->IRC"), ("i2m", "IRC->Matrix")):
        a, b = results["scale-out"][way], results["single-process"][way]
        print(
            f"  {label}: msg/s x{a['msg_s'] / b['msg_s']:.2f},"
            f" p50 x{a['p50_ms'] / b['p50_ms']:.2f},"
            f" p99 x{a['p99_ms'] / b['p99_ms']:.2f}"
        )
    print(f"\nRSS: single process {single_rss / 1024:.1f} MiB")
    for name, kib in rss.items():
        print(f"RSS: {name} {kib / 1024:.1f} MiB")
    total = sum(rss.values())
    print(f"RSS: scale-out total {total / 1024:.1f} MiB (x{total / single_rss:.2f})")


if __name__ == "__main__":
    asyncio.run(main())
