"""N IRC puppet connections (1,000 by default, 10,000 for the scale figure) from one process
against ngircd on loopback.

Starts ngircd (tests/harness/ircd.py), then in two fresh subprocesses:

* ``puppets``: the connector's own puppet pool (IRCConnector with a stub BridgeAPI); N Matrix
  users get a puppet each, all join one channel, the bot listens to it;
* ``baseline``: raw asyncio sockets doing only NICK/USER/JOIN and discarding what they read.

Prints, for each: seconds until all are joined, RSS growth per connection (KiB); then the
ratios puppets/baseline. Targets: < 10 s and < 50 KiB per connection.

ngircd takes any number of connections from one address (``MaxConnections`` and
``MaxConnectionsIP`` 0, ``MaxJoins`` 0: tests/harness/ircd.py); the soft limit of open files
is raised to the hard one for the bench, ngircd and both children (each needs one descriptor
per connection; ``ulimit -Hn`` must exceed N).

    /tmp/venv/bin/python bench/irc_connections.py [-n 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
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


class StubBridge:
    domain = "bench.local"
    log = logging.getLogger("bench")

    async def emit(self, event: Any) -> None:
        pass

    async def notify(self, user_id: str, text: str, portal: Any = None) -> None:
        print("notify:", user_id, text, file=sys.stderr)

    async def matrix_user(self, user_id: str) -> Any:
        raise NotImplementedError

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

    def mxc_to_url(self, mxc: str) -> str:
        return mxc

    async def upload_text(self, text: str, filename: str) -> str:
        return "https://bench.local/paste"


async def run_puppets(host: str, port: int, n: int) -> dict[str, float]:
    from connectors.irc import IRCConnector

    cfg = {
        "networks": {
            "bench": {
                "host": host,
                "port": port,
                "connects_per_second": 2000,
                "max_connections": n + 10,
                "channels": [CHANNEL],
                "bot": {"nick": "benchbot"},
            }
        }
    }
    connector = IRCConnector(StubBridge(), cfg)  # type: ignore[arg-type]
    await connector.start()
    net = connector.networks["bench"]
    while not (net.bot.registered and CHANNEL in net.bot.joined):  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    before = rss_kib()
    start = time.monotonic()
    puppets = []
    for i in range(n):
        puppet = net.pool.obtain(f"@user{i}:bench.local", f"User{i}")
        assert puppet is not None
        puppet.conn.channels[CHANNEL] = None
        puppet.conn.channel_names[CHANNEL] = CHANNEL
        puppets.append(puppet)
    while not all(CHANNEL in p.conn.joined for p in puppets):  # noqa: ASYNC110
        await asyncio.sleep(0.01)
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
    }


async def run_baseline(host: str, port: int, n: int) -> dict[str, float]:
    before = rss_kib()
    start = time.monotonic()
    joined = 0
    failed = 0
    done = asyncio.Event()
    writers = []

    async def one(i: int) -> None:
        nonlocal failed
        try:
            await one_inner(i)
        except Exception as e:
            print(f"baseline connection {i}: {e!r}", file=sys.stderr)
        if not seen_by[i]:
            failed += 1
            if joined + failed == n:
                done.set()

    seen_by = [False] * n

    async def one_inner(i: int) -> None:
        nonlocal joined
        reader, writer = await asyncio.open_connection(host, port)
        writers.append(writer)
        writer.write(f"NICK raw{i}\r\nUSER raw{i} 0 * :raw\r\nJOIN {CHANNEL}\r\n".encode())
        seen = False
        while True:
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b"PING"):
                writer.write(b"PONG" + line[4:])
            elif not seen and b" 366 " in line:
                seen = seen_by[i] = True
                joined += 1
                if joined + failed == n:
                    done.set()

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await done.wait()
    elapsed = time.monotonic() - start
    await asyncio.sleep(1.0)
    after = rss_kib()
    for w in writers:
        w.close()
    for t in tasks:
        t.cancel()
    return {"seconds": elapsed, "kib_per_conn": (after - before) / n, "failed": failed}


def child(mode: str, host: str, port: int, n: int) -> None:
    raise_fd_limit(n)
    logging.basicConfig(level=logging.WARNING)
    fn = run_puppets if mode == "puppets" else run_baseline
    print(json.dumps(asyncio.run(fn(host, port, n))))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--child", choices=["puppets", "baseline"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.host, args.port, args.n)
        return
    files = raise_fd_limit(args.n)  # ngircd inherits it
    from tests.harness.ircd import start_ngircd

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="irc-bench-") as tmp:
        for mode in ("baseline", "puppets"):
            server = start_ngircd(Path(tmp) / mode)  # a fresh server: same start for both
            try:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        mode,
                        "--host",
                        server.host,
                        "--port",
                        str(server.port),
                        "-n",
                        str(args.n),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=300 + args.n // 10,
                )
                if out.returncode != 0:
                    print(out.stderr, file=sys.stderr)
                    raise SystemExit(f"{mode} run failed")
                results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            finally:
                server.stop()
    p, b = results["puppets"], results["baseline"]
    n = args.n
    print(f"{n} connections joined to one channel on ngircd (loopback, open files {files})")
    print(f"  baseline (raw asyncio NICK/USER/JOIN): {b['seconds']:.2f} s, "
          f"{b['kib_per_conn']:.1f} KiB/conn")  # fmt: skip
    print(f"  connector puppets:                     {p['seconds']:.2f} s, "
          f"{p['kib_per_conn']:.1f} KiB/conn")  # fmt: skip
    print(f"  ratio puppets/baseline: time x{p['seconds'] / b['seconds']:.2f}, "
          f"memory x{p['kib_per_conn'] / max(b['kib_per_conn'], 0.1):.2f}")  # fmt: skip
    print(f"  listener saw {int(p['members_seen_by_listener'])} members; puppets discarded "
          f"{int(p['puppet_lines_ignored'])} lines unparsed, parsed "
          f"{int(p['puppet_lines_parsed'])}")  # fmt: skip
    ok = p["seconds"] < 10 and p["kib_per_conn"] < 50
    print("  targets (< 10 s, < 50 KiB/conn):", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
