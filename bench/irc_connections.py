"""N IRC puppet connections (1,000 by default, 10,000 for the scale figure) from one process
against ngircd on loopback.

Starts ngircd (tests/harness/ircd.py), then in two fresh subprocesses:

* ``puppets``: the connector's own puppet pool (IRCConnector with a stub BridgeAPI); N Matrix
  users get a puppet each, all join one channel, the bot listens to it;
* ``baseline``: raw asyncio sockets doing only NICK/USER/JOIN and discarding what they read.

Both open their connections at the same pace, 2,000 a second.

Prints, for each: seconds until all are joined, RSS growth per connection (KiB); then the
ratios puppets/baseline. Targets: < 10 s and < 50 KiB per connection.

ngircd takes any number of connections from one address (``MaxConnections`` and
``MaxConnectionsIP`` 0, ``MaxJoins`` 0: tests/harness/ircd.py); the soft limit of open files
is raised to the hard one for the bench, ngircd and both children (each needs one descriptor
per connection; ``ulimit -Hn`` must exceed N).

Then ``reconnect``: N puppets whose users sent messages in a shuffled order come back, paced
at ``--rate`` (``connects_per_second``), after a restart of the connector (the order read
back from its store) and after ngircd is killed and started again. Prints the curve
(connections up against seconds), the effective rate and whether ngircd saw the bot first
and then the puppets most recently active first (its log gives the order of registration).

Every wait has a deadline (``--timeout``, by default scaled to N): when connections never
come up the bench exits 1 saying how many did and in which phase, instead of hanging.

    python bench/irc_connections.py [-n 1000] [--only join|reconnect] [--rate 50] [--timeout S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHANNEL = "#bench"
# Connections opened a second in the join figure, by the puppets (their network's
# connects_per_second) and by the raw baseline alike: all at once, most of them would wait
# out SYN retransmits behind ngircd's short listen backlog, and the baseline would measure
# the kernel's backoff.
JOIN_RATE = 2000
# Even so ngircd, busy with the JOIN fan-out, lets a few connections overflow its accept
# queue (a backlog of 10, built in): the client sees them established, the server never
# accepts them. Both sides give up on a connection that has not heard a line in this many
# seconds and connect again (the puppets through their network's register_timeout).
REGISTER_TIMEOUT = 10.0


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def raise_fd_limit(n: int) -> int:
    """Raise the soft limit of open files to the hard one; the limit, which must exceed n."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 1 << 20) if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < n + 100:
        raise SystemExit(f"{n} connections need more open files than `ulimit -Hn` ({want})")
    return want


class BenchFailed(SystemExit):
    """The bench cannot give its figure (connections never came up): exit non-zero, saying
    why, instead of waiting for ever."""

    def __init__(self, message: str) -> None:
        super().__init__(f"irc_connections: {message}")


async def wait_until(pred: Any, timeout: float, what: Any) -> None:  # noqa: ASYNC109
    """Poll ``pred`` until true; BenchFailed after ``timeout`` seconds, with ``what()``."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise BenchFailed(f"timed out after {timeout:g} s: {what()}")
        await asyncio.sleep(0.01)


def check_stub(stub: object) -> None:
    """The stub must offer everything the core's BridgeAPI does (the connector calls more of
    it over time); say which are missing rather than let every puppet crash."""
    from bridge.connector.base import BridgeAPI

    wanted = {m for m in vars(BridgeAPI) if not m.startswith("_")}
    wanted |= set(BridgeAPI.__annotations__)
    missing = sorted(m for m in wanted if not hasattr(stub, m))
    if missing:
        raise BenchFailed(f"StubBridge lacks BridgeAPI's {', '.join(missing)}")


class StubBridge:
    """Every method of ``bridge.connector.BridgeAPI``: events are dropped, connection changes
    counted by state (the bench reads them), notices printed to stderr."""

    domain = "bench.local"
    log = logging.getLogger("bench")

    def __init__(self) -> None:
        self.connection_states: dict[str, int] = {}

    async def emit(self, event: Any) -> None:
        pass

    async def notify(self, user_id: str, text: str, portal: Any = None) -> None:
        print("notify:", user_id, text, file=sys.stderr)

    def connection_changed(self, change: Any) -> None:
        state = str(change.state)
        self.connection_states[state] = self.connection_states.get(state, 0) + 1

    async def matrix_user(self, user_id: str) -> Any:
        from bridge.connector import MatrixUser

        return MatrixUser(user_id, user_id[1:].split(":")[0], "user")

    async def matrix_avatar(self, user_id: str) -> Any:
        return None

    async def portals(self, network: str) -> list[Any]:
        return []

    async def portal_members(self, portal: Any) -> list[Any]:
        return []

    async def logins(self, network: str) -> list[Any]:
        return []

    def database(self) -> Any:
        raise RuntimeError("none")

    def ghost_user_id(self, network: str, remote_id: str) -> str:
        return f"@{network}_{remote_id}:bench.local"

    def mxc_to_url(self, mxc: str, filename: str = "") -> str:
        return mxc

    async def upload_text(self, text: str, filename: str) -> str:
        return "https://bench.local/paste"

    async def save_room_key(self, portal: Any, key: str | None) -> None:
        pass

    async def link_room(self, user_id: str, room_id: str, portal: Any) -> None:
        raise RuntimeError("no rooms in the bench")

    def public_url(self, path: str) -> str:
        return "https://bench.local" + path


async def run_puppets(host: str, port: int, n: int, limit: float) -> dict[str, float]:
    from connectors.irc import IRCConnector

    cfg = {
        "networks": {
            "bench": {
                "host": host,
                "port": port,
                "connects_per_second": JOIN_RATE,
                "register_timeout": REGISTER_TIMEOUT,
                "max_connections": n + 10,
                "channels": [CHANNEL],
                "bot": {"nick": "benchbot"},
            }
        }
    }
    bridge = StubBridge()
    check_stub(bridge)
    connector = IRCConnector(bridge, cfg)  # type: ignore[arg-type]
    await connector.start()
    net = connector.networks["bench"]
    await wait_until(
        lambda: net.bot.registered and CHANNEL in net.bot.joined,
        30,
        lambda: f"the bot did not join {CHANNEL} (registered: {net.bot.registered})",
    )
    before = rss_kib()
    start = time.monotonic()
    puppets = []
    for i in range(n):
        puppet = net.pool.obtain(f"@user{i}:bench.local", f"User{i}")
        assert puppet is not None
        puppet.conn.channels[CHANNEL] = None
        puppet.conn.channel_names[CHANNEL] = CHANNEL
        puppets.append(puppet)

    def progress() -> str:
        joined = sum(CHANNEL in p.conn.joined for p in puppets)
        up = sum(p.conn.registered for p in puppets)
        return (
            f"{joined} of {n} puppets joined {CHANNEL}, {up} registered; "
            f"connection changes by state: {bridge.connection_states}"
        )

    await wait_until(lambda: all(CHANNEL in p.conn.joined for p in puppets), limit, progress)
    elapsed = time.monotonic() - start
    await asyncio.sleep(1.0)  # let the JOIN fan-out settle
    after = rss_kib()
    members = len(net.translator.channels[CHANNEL].members)
    ignored = sum(p.conn.stats.lines_ignored for p in puppets)
    parsed = sum(p.conn.stats.lines_in - p.conn.stats.lines_ignored for p in puppets)
    await connector.stop()
    return {
        "seconds": elapsed,
        "kib_per_conn": (after - before) / n,
        "members_seen_by_listener": members,
        "puppet_lines_ignored": ignored,
        "puppet_lines_parsed": parsed,
        # attempts given up (no answer within register_timeout, or dropped) and made again
        "retries": bridge.connection_states.get("disconnected", 0),
    }


class MemoryDatabase:
    """The two queries of the connector's activity store, in memory (shared by the two
    connector instances of a restart); every other table is missing."""

    def __init__(self) -> None:
        self.activity: dict[tuple[str, str], int] = {}

    async def fetchval(self, query: str, *args: Any) -> Any:
        if "irc_puppet_activity" not in query:
            raise RuntimeError("no such table")
        return None

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        return [
            {"user_id": user, "last_message": when}
            for (net, user), when in self.activity.items()
            if net == args[0]
        ]

    async def execute(self, query: str, *args: Any) -> None:
        net, user, when = args
        self.activity[(net, user)] = max(when, self.activity.get((net, user), 0))


class ReconnectBridge(StubBridge):
    def __init__(self, n: int) -> None:
        from bridge.connector import MatrixUser, PortalKey

        super().__init__()
        self.db = MemoryDatabase()
        self.portal = PortalKey("irc_bench", CHANNEL)
        self.users = [MatrixUser(f"@user{i}:bench.local", f"User{i}", "user") for i in range(n)]

    async def portals(self, network: str) -> list[Any]:
        return [self.portal]

    async def portal_members(self, portal: Any) -> list[Any]:
        return list(self.users)

    def database(self) -> Any:
        return self.db


REGISTERED = re.compile(r'^\[\d+:\d+\s+\d+\] User "([^!"]+)!.*" registered \(connection (\d+)\)')
ACCEPTED = re.compile(r"^\[\d+:\d+\s+\d+\] Accepted connection (\d+) ")


async def curve(
    net: Any, n: int, t0: float, limit: float, phase: str, bridge: StubBridge
) -> list[tuple[float, int]]:
    """(seconds since t0, connections registered) every 0.1 s until all n + bot are up;
    BenchFailed when they are not after ``limit`` seconds."""
    points: list[tuple[float, int]] = []
    while True:
        up = net.bot.registered + sum(p.conn.registered for p in net.pool.puppets.values())
        now = time.monotonic() - t0
        if not points or points[-1][1] != up:
            points.append((now, up))
        if up == n + 1:
            return points
        if now > limit:
            raise BenchFailed(
                f"{phase}: {up} of {n + 1} connections up after {limit:g} s "
                f"(bot registered: {net.bot.registered}); connection changes by state: "
                f"{bridge.connection_states}"
            )
        await asyncio.sleep(0.1)


def log_order(logfile: Path, mark: int) -> dict[str, list[str]]:
    """The nicks in the order ngircd accepted their connections (the bridge's doing) and in
    the order it finished registering them (its own pace under load)."""
    accepted: list[str] = []  # connection numbers, then nicks
    registered: list[str] = []
    for line in logfile.read_text(errors="replace")[mark:].splitlines():
        if m := ACCEPTED.match(line):
            accepted.append(m.group(1))
        elif m := REGISTERED.match(line):
            registered.append(m.group(1))
            # the latest accept of that connection number is this user's (none when the
            # accept was logged before the mark: the nick then counts as not accepted)
            if m.group(2) in accepted:
                i = len(accepted) - 1 - accepted[::-1].index(m.group(2))
                accepted[i] = "nick:" + m.group(1)
    nicks = [a[5:] for a in accepted if a.startswith("nick:")]
    return {"accepted": nicks, "registered": registered}


def order_report(seen: dict[str, list[str]], expected: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    place = {nick: i for i, nick in enumerate(expected)}
    for key, nicks in seen.items():
        # How far each connection landed from its place: neighbours swapped by the jitter
        # between the pacer's grant and the connect (a thread-pool getaddrinfo) move by a few.
        moved = [abs(i - place.get(nick, -len(expected))) for i, nick in enumerate(nicks)]
        out[key] = {
            "ok": nicks == expected,
            "count": len(nicks),
            "bot_first": bool(nicks) and nicks[0] == expected[0],
            "misplaced": sum(1 for d in moved if d),
            "max_shift": max(moved, default=0),
        }
    return out


async def run_reconnect(n: int, rate: float, workdir: str, limit: float) -> dict[str, Any]:
    from connectors.irc import IRCConnector
    from tests.harness.ircd import start_ngircd

    server = start_ngircd(Path(workdir) / "reconnect")
    logfile = server.workdir / "ngircd.log"
    cfg = {
        "networks": {
            "bench": {
                "host": server.host,
                "port": server.port,
                "connects_per_second": rate,
                "max_connections": n + 10,
                "reconnect": {"min_delay": 1, "max_delay": 4},
                "channels": [CHANNEL],
                "bot": {"nick": "benchbot"},
            }
        }
    }
    bridge = ReconnectBridge(n)
    check_stub(bridge)
    results: dict[str, Any] = {}
    try:
        connector = IRCConnector(bridge, cfg)  # type: ignore[arg-type]
        await connector.start()  # brings every member's puppet up, paced
        net = connector.networks["bench"]
        await curve(net, n, time.monotonic(), limit, "first start", bridge)
        # The users spoke in a shuffled order: the last to speak must come back first.
        speakers = list(bridge.users)
        random.Random(15).shuffle(speakers)
        base = time.time() - n
        for i, user in enumerate(speakers):
            net.pool.activity[user.user_id] = base + i
            await connector.activity_store.save("bench", user.user_id, base + i)
        puppet_nicks = {u.user_id: net.pool.get(u.user_id).conn.nick for u in bridge.users}
        expected = ["benchbot"] + [puppet_nicks[u.user_id] for u in reversed(speakers)]

        await connector.stop()
        mark = len(logfile.read_text(errors="replace"))
        connector = IRCConnector(bridge, cfg)  # type: ignore[arg-type]
        t0 = time.monotonic()
        await connector.start()
        net = connector.networks["bench"]
        results["restart"] = await curve(net, n, t0, limit, "bridge restart", bridge)
        await asyncio.sleep(0.5)
        results["restart_order"] = order_report(log_order(logfile, mark), expected)

        proc = server.proc
        assert proc is not None
        proc.kill()
        proc.wait(5)
        server.proc = None

        def still_up() -> int:
            return net.bot.registered + sum(p.conn.registered for p in net.pool.puppets.values())

        # every connection saw the crash: the curve starts from none up
        await wait_until(
            lambda: not still_up(), 30, lambda: f"{still_up()} connections missed ngircd's crash"
        )
        mark = len(logfile.read_text(errors="replace"))
        await asyncio.to_thread(server.restart, 2.0)
        t0 = time.monotonic()
        results["outage"] = await curve(net, n, t0, limit, "ngircd crash", bridge)
        await asyncio.sleep(0.5)
        results["outage_order"] = order_report(log_order(logfile, mark), expected)
        await connector.stop()
    finally:
        server.stop()
    return results


async def run_baseline(host: str, port: int, n: int, limit: float) -> dict[str, float]:
    before = rss_kib()
    start = time.monotonic()
    joined = 0
    failed = 0
    done = asyncio.Event()
    writers = []

    errors: dict[str, int] = {}

    retries = 0

    async def one(i: int) -> None:
        nonlocal failed, retries
        try:
            while not await one_inner(i):
                retries += 1
        except Exception as e:
            if not errors:
                print(f"baseline connection {i}: {e!r}", file=sys.stderr)
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
        if not seen_by[i]:
            failed += 1
            if joined + failed == n:
                done.set()

    seen_by = [False] * n

    async def one_inner(i: int) -> bool:
        """False when the server never answered (connect again)."""
        nonlocal joined
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"NICK raw{i}\r\nUSER raw{i} 0 * :raw\r\nJOIN {CHANNEL}\r\n".encode())
        try:
            line = await asyncio.wait_for(reader.readline(), REGISTER_TIMEOUT)
        except TimeoutError:
            writer.close()
            return False
        writers.append(writer)
        seen = False
        while True:
            if not line:
                return True
            if line.startswith(b"PING"):
                writer.write(b"PONG" + line[4:])
            elif not seen and b" 366 " in line:
                seen = seen_by[i] = True
                joined += 1
                if joined + failed == n:
                    done.set()
            line = await reader.readline()

    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(one(i)))
        if (wait := start + (i + 1) / JOIN_RATE - time.monotonic()) > 0:
            await asyncio.sleep(wait)
    try:
        await asyncio.wait_for(done.wait(), limit)
    except TimeoutError:
        raise BenchFailed(
            f"timed out after {limit:g} s: {joined} of {n} raw connections joined "
            f"{CHANNEL}, {failed} failed ({errors or 'no errors'}), {retries} connected again"
        ) from None
    elapsed = time.monotonic() - start
    await asyncio.sleep(1.0)
    after = rss_kib()
    for w in writers:
        w.close()
    for t in tasks:
        t.cancel()
    if errors:
        print(f"baseline connections failed: {errors}", file=sys.stderr)
    return {
        "seconds": elapsed,
        "kib_per_conn": (after - before) / n,
        "failed": failed,
        "retries": retries,
    }


def child(
    mode: str, host: str, port: int, n: int, rate: float, workdir: str, timeout: float
) -> None:
    raise_fd_limit(n)
    logging.basicConfig(level=logging.WARNING)
    if mode == "reconnect":
        print(json.dumps(asyncio.run(run_reconnect(n, rate, workdir, timeout))))
        return
    fn = run_puppets if mode == "puppets" else run_baseline
    print(json.dumps(asyncio.run(fn(host, port, n, timeout))))


def run_child(argv: list[str], timeout: float, what: str) -> str:
    """Run a child bench; its last line of output (JSON). BenchFailed, with its stderr, when
    it fails or outlives ``timeout`` (its own deadlines are shorter: this is the backstop)."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        print(err or "", file=sys.stderr)
        raise BenchFailed(f"{what} run killed after {timeout:g} s") from None
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        raise BenchFailed(f"{what} run failed (exit {out.returncode})")
    lines = out.stdout.strip().splitlines()
    if not lines:
        print(out.stderr, file=sys.stderr)
        raise BenchFailed(f"{what} run printed nothing")
    return lines[-1]


def print_curve(title: str, points: list[tuple[float, int]], n: int, rate: float) -> None:
    print(f"  {title}: connections up (of {n + 1}) against seconds")
    marks = sorted({1, 2, 5, 10, 20, 30, 60, 120, 300} | {int(points[-1][0]) + 1})
    for mark in marks:
        if mark > points[-1][0] + 1:
            break
        up = max((c for t, c in points if t <= mark), default=0)
        print(f"    {mark:>4} s: {up:>5}")
    first = next((t for t, c in points if c >= 1), 0.0)
    end, up = points[-1]
    span = max(end - first, 1e-3)
    print(f"    bot up after {first:.1f} s; all {up} up after {end:.1f} s; "
          f"{(up - 1) / span:.1f} connections/s after the bot (configured {rate:g})")  # fmt: skip


def run_reconnect_child(n: int, rate: float, timeout: float) -> None:
    with tempfile.TemporaryDirectory(prefix="irc-bench-") as tmp:
        argv = [sys.executable, __file__, "--child", "reconnect", "-n", str(n)]
        argv += ["--rate", str(rate), "--workdir", tmp, "--timeout", str(timeout)]
        # four phases of at most ``timeout`` each, ngircd's restart and the stops
        r = json.loads(run_child(argv, 4 * timeout + 120, "reconnect"))
    if os.environ.get("BENCH_JSON"):
        Path(os.environ["BENCH_JSON"]).write_text(json.dumps(r))  # the raw figures, kept
    print(f"{n} puppets reconnecting at connects_per_second={rate:g} on ngircd (loopback)")
    for phase, title in (
        ("restart", "after a bridge restart"),
        ("outage", "after an ngircd crash"),
    ):
        print_curve(title, r[phase], n, rate)
        for key, what in (("accepted", "connections accepted"), ("registered", "registrations")):
            o = r[f"{phase}_order"][key]
            ok = "bot first, then most recently active first"
            if not o["ok"]:
                ok = (
                    f"{'bot first' if o['bot_first'] else 'bot NOT first'}; {o['misplaced']} "
                    f"of {o['count']} off their place, by at most {o['max_shift']}"
                )
            print(f"    order of {what} (ngircd log): {ok}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--child", choices=["puppets", "baseline", "reconnect"])
    parser.add_argument("--only", choices=["join", "reconnect"])
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--workdir", default="")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        help="seconds a phase may take before the bench gives up and exits 1 (default: "
        "60 + n/100 for the join, 60 + 2n/rate for each reconnect phase)",
    )
    args = parser.parse_args()
    if args.child:
        child(args.child, args.host, args.port, args.n, args.rate, args.workdir, args.timeout)
        return
    files = raise_fd_limit(args.n)  # ngircd inherits it
    if args.only != "reconnect":
        run_join(args.n, files, args.timeout or 60 + args.n / 100)
    if args.only != "join":
        run_reconnect_child(args.n, args.rate, args.timeout or 60 + 2 * args.n / args.rate)


def run_join(n: int, files: int, timeout: float) -> None:
    from tests.harness.ircd import start_ngircd

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="irc-bench-") as tmp:
        for mode in ("baseline", "puppets"):
            server = start_ngircd(Path(tmp) / mode)  # a fresh server: same start for both
            try:
                argv = [sys.executable, __file__, "--child", mode, "-n", str(n)]
                argv += ["--host", server.host, "--port", str(server.port)]
                argv += ["--timeout", str(timeout)]
                # the bot's 30 s, the join's timeout, the settling and the stop
                results[mode] = json.loads(run_child(argv, timeout + 90, mode))
            finally:
                server.stop()
    p, b = results["puppets"], results["baseline"]
    print(f"{n} connections joined to one channel on ngircd (loopback, open files {files})")
    print(f"  baseline (raw asyncio NICK/USER/JOIN): {b['seconds']:.2f} s, "
          f"{b['kib_per_conn']:.1f} KiB/conn, {int(b['retries'])} connected again")  # fmt: skip
    print(f"  connector puppets:                     {p['seconds']:.2f} s, "
          f"{p['kib_per_conn']:.1f} KiB/conn, {int(p['retries'])} connected again")  # fmt: skip
    print(f"  ratio puppets/baseline: time x{p['seconds'] / b['seconds']:.2f}, "
          f"memory x{p['kib_per_conn'] / max(b['kib_per_conn'], 0.1):.2f}")  # fmt: skip
    print(f"  listener saw {int(p['members_seen_by_listener'])} members; puppets discarded "
          f"{int(p['puppet_lines_ignored'])} lines unparsed, parsed "
          f"{int(p['puppet_lines_parsed'])}")  # fmt: skip
    ok = p["seconds"] < 10 and p["kib_per_conn"] < 50
    print("  targets (< 10 s, < 50 KiB/conn):", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
