"""Delta Chat connector throughput and latency, against the mail stack's own ceiling.

Starts a loopback postfix + dovecot (tests/harness/mailstack.py), Synapse, the bridge with the
Delta Chat connector, and a separate Delta Chat core with two profiles (alice, bob). Then:

* ceiling: alice -> bob directly (two cores, same mail server), N messages sent at once;
* Matrix -> Delta Chat: a Matrix user sends N messages into the DM portal, alice receives;
* Delta Chat -> Matrix: alice sends N messages, the Matrix user sees them in the room;
* memory: RSS of the bridge's core before and after K Matrix users log in (puppets).

Prints messages/s and p50/p99 latency for each direction, and KiB per puppeted account.

    /tmp/venv/bin/python bench/deltachat_throughput.py [-n 50] [-k 5]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ruamel.yaml import YAML  # noqa: E402

from bridge.bridge import Bridge  # noqa: E402
from bridge.config import load as load_config  # noqa: E402
from bridge.connector import PortalKey  # noqa: E402
from tests.conftest import AS_TOKEN, HS_TOKEN, write_config  # noqa: E402
from tests.deltachat.conftest import Peers, dc_config  # noqa: E402
from tests.harness.mailstack import start_mailstack  # noqa: E402
from tests.harness.ports import free_port  # noqa: E402
from tests.harness.synapse import start_synapse  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def summary(name: str, latencies: list[float], elapsed: float) -> None:
    lat = sorted(latencies)
    p50 = statistics.median(lat)
    p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
    print(
        f"{name:<28} {len(lat) / elapsed:7.1f} msg/s   p50 {p50 * 1000:7.0f} ms"
        f"   p99 {p99 * 1000:7.0f} ms   ({len(lat)} messages in {elapsed:.1f} s)"
    )


async def wait_incoming(peers: Peers, acc: int, texts: dict[str, float], since: int) -> dict:
    """Arrival times of messages whose text ends with one of ``texts``."""
    got: dict[str, float] = {}
    seen: set[int] = set()
    deadline = time.monotonic() + 300
    while len(got) < len(texts) and time.monotonic() < deadline:
        for ev in peers.events.get(acc, [])[since:]:
            if ev["kind"] != "IncomingMsg" or ev["msgId"] in seen:
                continue
            seen.add(ev["msgId"])
            msg = await peers.rpc.call("get_message", acc, ev["msgId"])
            for t in texts:
                if str(msg["text"]).endswith(t) and t not in got:
                    got[t] = time.monotonic()
        await asyncio.sleep(0.01)
    return got


async def main(n: int, k: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="mimi-dc-bench-"))
    stack = await asyncio.to_thread(start_mailstack)
    as_port = free_port()
    reg = work / "registration.yaml"
    with reg.open("w") as f:
        YAML().dump(
            {
                "id": "mimi-bridge",
                "url": f"http://127.0.0.1:{as_port}",
                "as_token": AS_TOKEN,
                "hs_token": HS_TOKEN,
                "sender_localpart": "mimibot",
                "rate_limited": False,
                "receive_ephemeral": True,
                "protocols": ["deltachat"],
                "namespaces": {
                    "users": [
                        {"exclusive": True, "regex": "@mimibot:localhost"},
                        {"exclusive": True, "regex": "@deltachat_.*:localhost"},
                    ],
                    "aliases": [{"exclusive": True, "regex": "#deltachat_.*:localhost"}],
                    "rooms": [],
                },
            },
            f,
        )
    synapse = await asyncio.to_thread(start_synapse, work / "synapse", [reg])
    peers = Peers(stack, work / "peers")
    await peers.rpc.start()
    bridge: Bridge | None = None
    try:
        alice = await peers.add("alice", "Alice")
        bob = await peers.add("bob", "Bob")
        user = synapse.new_client("benchuser")
        bridge_addr = stack.add_user("bridge", "bridge-pw")
        cfg = dc_config(
            stack,
            work,
            bridge_addr,
            "bridge-pw",
            policy={"dm_receiver": user.user_id},
            rate_limit={"messages": 100_000},
        )
        path = write_config(
            work / "config.yaml",
            synapse,
            as_port,
            f"sqlite://{work / 'bridge.db'}",
            {"deltachat": cfg},
        )
        bridge = Bridge(load_config(path))
        logging.getLogger("mimi").setLevel(logging.WARNING)
        await bridge.start()
        conn: Any = bridge.connectors["deltachat"]

        # --- ceiling: alice -> bob directly -------------------------------------------
        link = await peers.rpc.call("get_chat_securejoin_qr_code", bob.acc, None)
        chat_ab = await alice.join(link)
        since = bob.mark()
        sent: dict[str, float] = {}
        t0 = time.monotonic()
        for i in range(n):
            text = f"ceiling {i:04d}"
            sent[text] = time.monotonic()
            await alice.send(chat_ab, text)
        got = await wait_incoming(peers, bob.acc, sent, since)
        summary("ceiling (core to core)", [got[t] - sent[t] for t in got], max(got.values()) - t0)

        # --- Matrix -> Delta Chat -----------------------------------------------------
        blink = await conn.rpc.call(
            "get_chat_securejoin_qr_code", conn.accounts.bridge_account, None
        )
        chat = await alice.join(blink)
        await alice.send(chat, "open")
        key = PortalKey("deltachat", alice.addr, receiver=user.user_id)
        deadline = time.monotonic() + 60
        portal = None
        while portal is None or portal.room_id is None:
            portal = await bridge.portal_store.get(key)
            if time.monotonic() > deadline:
                raise RuntimeError("no DM portal")
            await asyncio.sleep(0.1)
        room = portal.room_id
        await user.join(room)
        since = alice.mark()
        sent = {}
        t0 = time.monotonic()
        for i in range(n):
            text = f"to delta {i:04d}"
            sent[text] = time.monotonic()
            await user.send_text(room, text)
        got = await wait_incoming(peers, alice.acc, sent, since)
        summary("Matrix -> Delta Chat", [got[t] - sent[t] for t in got], max(got.values()) - t0)

        # --- Delta Chat -> Matrix -----------------------------------------------------
        sent = {}
        arrived: dict[str, float] = {}
        t0 = time.monotonic()
        for i in range(n):
            text = f"to matrix {i:04d}"
            sent[text] = time.monotonic()
            await alice.send(chat, text)
        deadline = time.monotonic() + 300
        while len(arrived) < n and time.monotonic() < deadline:
            for e in await user.messages(room, 2 * n + 20):
                b = e.get("content", {}).get("body", "")
                if b in sent and b not in arrived:
                    arrived[b] = time.monotonic()
            await asyncio.sleep(0.05)
        summary(
            "Delta Chat -> Matrix",
            [arrived[t] - sent[t] for t in arrived],
            max(arrived.values()) - t0,
        )

        # --- memory per puppeted account ----------------------------------------------
        pid = conn.rpc.pid
        await asyncio.sleep(2)
        before = rss_kib(pid)
        for i in range(k):
            addr = stack.add_user(f"puppet{i}", "pw")
            await conn.accounts.ensure(addr, "pw", False, f"@puppet{i}:localhost")
        await asyncio.sleep(5)
        after = rss_kib(pid)
        print(
            f"memory per puppeted account   {(after - before) / k:7.0f} KiB"
            f"   (core RSS {before} -> {after} KiB with {k} puppets)"
        )
        await user.close()
    finally:
        if bridge is not None:
            await bridge.stop()
        await peers.rpc.close()
        await asyncio.to_thread(synapse.stop)
        await asyncio.to_thread(stack.stop, True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=50, help="messages per direction")
    ap.add_argument("-k", type=int, default=5, help="puppeted accounts for the memory figure")
    args = ap.parse_args()
    asyncio.run(main(args.n, args.k))
