"""1,000 Matrix users as occupants of one MUC through one XEP-0114 component, and message
throughput both ways, against Synapse's own ceiling measured in the same run.

Starts a throwaway Synapse (tests/harness/synapse.py) and Prosody (tests/harness/prosody.py),
then runs the bridge core in this process with the XMPP connector:

0. the server's floor: N occupants joined from a raw XEP-0114 socket that reads and discards
   everything (a fresh Prosody): what joining N occupants costs Prosody itself;
1. a portal: an XMPP user creates a MUC, a Matrix user joins its alias;
2. joins: N Matrix users join the MUC through the connector (``client_for`` and a Matrix
   join, as the core does for a member joining the portal); measured until the bridge has
   every occupant joined and until an XMPP user in the room sees all of them; bridge memory
   growth per puppet (RSS after / before, divided by N);
3. XMPP -> Matrix: an XMPP user sends M messages in the MUC; measured until a Matrix user
   has them all (/sync). Synapse's ceiling for the same traffic: M messages sent straight to
   Synapse as a ghost, in order, in a plain room (what the bridge must do at least);
4. Matrix -> XMPP: K Matrix users send M messages (M/K each, concurrently) in the portal;
   measured until the XMPP user has them all. Synapse's ceiling: the same sends in a plain
   room, until a Matrix user has them all (/sync);
5. loss and order: every message arrives once, in the order each sender sent it;
6. CPU seconds used by each process in each phase (this process runs the bridge and the
   test clients), and the load average: the four processes share this machine's cores.

Prints the figures; no assertions on timings.

    /tmp/venv/bin/python bench/xmpp_muc.py [-n 1000] [-m 500] [-k 10] [--prosody-config LUA]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from slixmpp import JID, ClientXMPP  # noqa: E402
from slixmpp.stanza import Message  # noqa: E402

from bridge.bridge import Bridge  # noqa: E402
from bridge.config import parse as parse_config  # noqa: E402
from bridge.connector import (  # noqa: E402
    MatrixMembership,
    MatrixSender,
    MatrixUser,
    Membership,
    PortalKey,
    escape_localpart,
)
from tests.harness.ports import free_port  # noqa: E402
from tests.harness.prosody import ProsodyServer, start_prosody  # noqa: E402
from tests.harness.synapse import MatrixClient, SynapseServer, start_synapse  # noqa: E402

COMPONENT = "matrix.localhost"
SECRET = "bench-component-secret"
AS_TOKEN = "bench-as-token-0123456789"
HS_TOKEN = "bench-hs-token-0123456789"
HS_DOMAIN = "localhost"


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


# --- servers ---------------------------------------------------------------------------------


def write_registration(path: Path, as_port: int) -> None:
    reg = {
        "id": "mimi-bridge",
        "url": f"http://127.0.0.1:{as_port}",
        "as_token": AS_TOKEN,
        "hs_token": HS_TOKEN,
        "sender_localpart": "mimibot",
        "rate_limited": False,
        "receive_ephemeral": True,
        "protocols": ["xmpp"],
        "namespaces": {
            "users": [
                {"exclusive": True, "regex": "@mimibot:localhost"},
                {"exclusive": True, "regex": "@xmpp_.*:localhost"},
            ],
            "aliases": [{"exclusive": True, "regex": "#xmpp_.*:localhost"}],
            "rooms": [],
        },
    }
    path.write_text(json.dumps(reg))


def bridge_config(
    tmp: Path, synapse: SynapseServer, prosody: ProsodyServer, as_port: int
) -> dict[str, Any]:
    return {
        "homeserver": {"address": synapse.url, "domain": HS_DOMAIN},
        "appservice": {
            "address": f"http://127.0.0.1:{as_port}",
            "hostname": "127.0.0.1",
            "port": as_port,
            "as_token": AS_TOKEN,
            "hs_token": HS_TOKEN,
            "database": f"sqlite://{tmp / 'bridge.db'}",
        },
        "bridge": {
            "permissions": {"localhost": "user"},
            "credentials_key": "bench-credentials-key",
            "backfill_limit": 0,
        },
        "logging": {"level": "WARNING"},
        "connectors": {
            "xmpp": {
                "server": {"host": prosody.host, "port": prosody.component_port},
                "component": {"domain": COMPONENT, "secret": SECRET},
                "muc_services": [prosody.muc_domain],
                "send_timeout": 30,
                "self_ping_interval": 3600,
            }
        },
    }


# --- an XMPP user -------------------------------------------------------------------------------


class XUser:
    """A plain slixmpp client that records message bodies with a given prefix."""

    def __init__(self, prosody: ProsodyServer, name: str) -> None:
        prosody.register_user(name, "pw")
        self.jid = f"{name}@{prosody.domain}"
        self.prosody = prosody
        self.xmpp = ClientXMPP(
            f"{self.jid}/bench",
            "pw",
            plugin_config={"feature_mechanisms": {"unencrypted_scram": True}},
        )
        self.xmpp.enable_plaintext = True
        self.xmpp.enable_starttls = False
        self.xmpp.enable_direct_tls = False
        self.xmpp.register_plugin("xep_0045")
        self.bodies: list[tuple[str, str]] = []  # (from nick, body)
        self.arrived: dict[str, float] = {}
        self.xmpp.add_event_handler("groupchat_message", self._on_groupchat)

    def _on_groupchat(self, msg: Message) -> None:
        body = str(msg["body"])
        if body:
            self.bodies.append((JID(str(msg["from"])).resource, body))
            self.arrived[body] = time.monotonic()

    async def connect(self) -> XUser:
        started: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def on_start(_event: Any) -> None:
            if not started.done():
                started.set_result(True)

        self.xmpp.add_event_handler("session_start", on_start)
        self.xmpp.connect(self.prosody.host, self.prosody.c2s_port)
        await asyncio.wait_for(started, 20)
        self.xmpp.send_presence()
        return self

    async def join(self, room: str, nick: str) -> None:
        await self.xmpp.plugin["xep_0045"].join_muc_wait(JID(room), nick, maxstanzas=0, timeout=30)

    def occupants(self, room: str) -> int:
        return len(self.xmpp.plugin["xep_0045"].get_roster(JID(room)) or [])

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.xmpp.disconnect(wait=0.5), 3)
        except Exception:
            pass


# --- a Matrix observer ------------------------------------------------------------------------


class Timeline:
    """Follows rooms through /sync and records when each message body arrives."""

    def __init__(self, client: MatrixClient, rooms: list[str]) -> None:
        self.client = client
        self.rooms = rooms
        self.bodies: list[tuple[str, str]] = []  # (sender, body)
        self.arrived: dict[str, float] = {}
        self.limited = 0
        self._task: asyncio.Task[None] | None = None
        self._since: str | None = None
        self._filter = json.dumps(
            {
                "room": {
                    "rooms": rooms,
                    "timeline": {"limit": 1000, "types": ["m.room.message"]},
                    "state": {"types": []},
                    "ephemeral": {"types": []},
                    "account_data": {"types": []},
                },
                "presence": {"types": []},
                "account_data": {"types": []},
            }
        )

    async def start(self) -> None:
        _, body = await self.client.request(
            "GET", "/_matrix/client/v3/sync", params={"timeout": "0", "filter": self._filter}
        )
        self._since = body["next_batch"]
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            status, body = await self.client.request(
                "GET",
                "/_matrix/client/v3/sync",
                params={"timeout": "10000", "since": self._since, "filter": self._filter},
            )
            if status != 200:
                await asyncio.sleep(0.1)
                continue
            self._since = body["next_batch"]
            now = time.monotonic()
            for room in self.rooms:
                timeline = body.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {})
                self.limited += bool(timeline.get("limited"))
                for evt in timeline.get("events", []):
                    text = str(evt.get("content", {}).get("body", ""))
                    self.bodies.append((evt["sender"], text))
                    self.arrived.setdefault(text, now)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()


async def wait_all(arrived: dict[str, float], wanted: list[str], limit: float) -> float | None:
    """Wait until every body in ``wanted`` has arrived; the arrival time of the last one."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if all(w in arrived for w in wanted):
            return max(arrived[w] for w in wanted)
        await asyncio.sleep(0.01)
    return None


def check(seen: list[tuple[str, str]], sent: dict[str, list[str]]) -> tuple[int, int, int]:
    """(lost, duplicated, out of order) among the bodies of each sender."""
    lost = dup = disorder = 0
    for sender, bodies in sent.items():
        wanted = set(bodies)
        got = [b for s, b in seen if s == sender and b in wanted]
        dup += len(got) - len(set(got))
        lost += len(wanted - set(got))
        order = list(dict.fromkeys(got))
        expected = [b for b in bodies if b in set(order)]
        disorder += sum(1 for a, b in zip(order, expected, strict=True) if a != b)
    return lost, dup, disorder


# --- CPU accounting ---------------------------------------------------------------------------


def proc_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Cpu:
    """CPU seconds of this process, Prosody and Synapse between two points."""

    def __init__(self, prosody: ProsodyServer, synapse: SynapseServer) -> None:
        self.prosody = prosody
        self.synapse = synapse
        self._start: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        proc = self.prosody._proc
        return {
            "bridge": time.process_time(),
            "prosody": proc_cpu(proc.pid if proc else None),
            "synapse": proc_cpu(self.synapse.pid),
        }

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> dict[str, float]:
        now = self._now()
        return {k: now[k] - self._start[k] for k in now}


# --- the server's floor: joins from a raw component socket ---------------------------------


async def raw_floor(
    n: int, m: int, tmp: Path, prosody_config: str = "", fanout: bool = False
) -> dict[str, float]:
    """What Prosody itself needs, on a fresh Prosody: N occupants joined from a raw XEP-0114
    connection that only counts what it gets (with the same caps element as the bridge's
    puppets), then M messages from an XMPP user fanned out to them."""
    prosody = await asyncio.to_thread(
        start_prosody, tmp / "prosody-raw", COMPONENT, SECRET, "warn", prosody_config, fanout
    )
    owner = None
    try:
        room = f"raw@{prosody.muc_domain}"
        owner = await XUser(prosody, "rawowner").connect()
        await owner.join(room, "owner")
        reader, writer = await asyncio.open_connection(prosody.host, prosody.component_port)
        writer.write(
            f"<stream:stream xmlns='jabber:component:accept' "
            f"xmlns:stream='http://etherx.jabber.org/streams' to='{COMPONENT}'>".encode()
        )
        head = b""
        while b"id=" not in head:
            head += await reader.read(4096)
        quote = head[head.index(b"id=") + 3 : head.index(b"id=") + 4]
        sid = head.split(b"id=" + quote, 1)[1].split(quote, 1)[0]
        digest = hashlib.sha1(sid + SECRET.encode()).hexdigest()
        writer.write(f"<handshake>{digest}</handshake>".encode())
        reply = b""
        while b"handshake" not in reply:
            reply += await reader.read(4096)
        pid = prosody._proc.pid if prosody._proc else None
        caps = (
            "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' "
            "node='https://github.com/mimi-bridge/mimi-bridge' ver='rpQSov/Hz2UQYTOwCzFNWvPv6FY='/>"
        )

        async def count(pattern: bytes, wanted: int) -> int:
            seen, tail, received = 0, b"", 0
            while seen < wanted:
                data = await reader.read(1 << 20)
                if not data:
                    break
                received += len(data)
                chunk = tail + data
                seen += chunk.count(pattern) - tail.count(pattern)
                tail = chunk[-len(pattern) :]
            return received

        cpu0 = proc_cpu(pid)
        start = time.monotonic()
        for i in range(n):
            writer.write(
                f"<presence from='user{i}\\40{HS_DOMAIN}@{COMPONENT}/matrix' to='{room}/User {i}'>"
                f"<x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x>{caps}"
                "</presence>".encode()
            )
        received = await count(b"'110'", n)
        joins_s = time.monotonic() - start
        joins_cpu = proc_cpu(pid) - cpu0
        await asyncio.sleep(1.0)
        while True:  # the rest of the presence flood
            try:
                await asyncio.wait_for(reader.read(1 << 20), 0.5)
            except TimeoutError:
                break
        cpu0 = proc_cpu(pid)
        start = time.monotonic()
        for i in range(m):
            owner.xmpp.send_message(mto=JID(room), mbody=f"fanout {i}", mtype="groupchat")
        # With mod_muc_bridge_fanout the component gets one copy of each message.
        await count(b">fanout ", m if fanout else n * m)
        fanout_s = time.monotonic() - start
        writer.close()
        return {
            "joins_s": joins_s,
            "joins_prosody_cpu_s": joins_cpu,
            "mbytes": received / 1e6,
            "fanout_msg_s": m / fanout_s,
            "fanout_prosody_cpu_s": proc_cpu(pid) - cpu0,
        }
    finally:
        if owner is not None:
            await owner.close()
        prosody.stop()


# --- the run ------------------------------------------------------------------------------------


class Profiler:
    """cProfile around one phase (``--profile joins|x2m|m2x``), printed at the end."""

    def __init__(self, phase: str | None) -> None:
        self.phase = phase
        self.prof: Any = None

    def start(self, phase: str) -> None:
        if phase == self.phase:
            import cProfile

            self.prof = cProfile.Profile()
            self.prof.enable()

    def stop(self, phase: str) -> None:
        if phase == self.phase and self.prof is not None:
            self.prof.disable()

    def report(self) -> None:
        if self.prof is not None:
            import pstats

            pstats.Stats(self.prof, stream=sys.stderr).sort_stats("tottime").print_stats(30)


async def run(
    n: int,
    m: int,
    k: int,
    tmp: Path,
    profiler: Profiler,
    prosody_config: str = "",
    fanout: bool = False,
) -> dict[str, Any]:
    results: dict[str, Any] = {"n": n, "m": m, "k": k, "cores": os.cpu_count()}
    results["raw"] = await raw_floor(n, m, tmp, prosody_config, fanout)
    as_port = free_port()
    reg = tmp / "registration.json"
    write_registration(reg, as_port)
    synapse = await asyncio.to_thread(start_synapse, tmp / "synapse", [reg])
    prosody = await asyncio.to_thread(
        start_prosody, tmp / "prosody", COMPONENT, SECRET, "warn", prosody_config, fanout
    )
    cpu = Cpu(prosody, synapse)
    bridge = None
    xusers: list[XUser] = []
    clients: list[MatrixClient] = []
    try:
        cfg = parse_config(bridge_config(tmp, synapse, prosody, as_port), tmp / "config.yaml")
        bridge = Bridge(cfg)
        await bridge.start()
        connector: Any = bridge.connectors["xmpp"]

        # 1. The portal, and a plain Matrix room for Synapse's ceilings.
        muc = f"bench@{prosody.muc_domain}"
        owner = await XUser(prosody, "owner").connect()
        xusers.append(owner)
        await owner.join(muc, "owner")
        driver = synapse.new_client("driver")
        clients.append(driver)
        node, _, service = muc.partition("@")
        alias = f"#xmpp_{escape_localpart(node)}@{escape_localpart(service)}:{HS_DOMAIN}"
        room = await driver.join(alias)
        plain = await driver.create_room(preset="public_chat", name="plain")
        portal = PortalKey("xmpp", muc)
        while owner.occupants(muc) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

        # 2. N occupants.
        users = [MatrixUser(f"@bench{i}:{HS_DOMAIN}", f"Bench {i}", "user") for i in range(n)]
        gc.collect()
        rss0 = rss_kib()
        profiler.start("joins")
        cpu.start()
        start = time.monotonic()

        async def join(user: MatrixUser) -> None:
            client = await connector.client_for(user, portal)
            await client.handle_matrix_membership(
                MatrixMembership(
                    portal=portal,
                    sender=MatrixSender(user.user_id, user.display_name),
                    event_id="",
                    membership=Membership.JOIN,
                )
            )

        await asyncio.gather(*(join(u) for u in users))
        joined_bridge = time.monotonic() - start
        while owner.occupants(muc) < n + 2:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        joined_seen = time.monotonic() - start
        results["joins_cpu"] = cpu.stop()
        profiler.stop("joins")
        await asyncio.sleep(1.0)
        gc.collect()
        rss1 = rss_kib()
        states = [connector.rooms[muc].ours[u.user_id].state for u in users]
        results["joins"] = {
            "bridge_s": joined_bridge,
            "seen_by_xmpp_s": joined_seen,
            "occupants": owner.occupants(muc),
            "all_joined": all(s == "joined" for s in states),
            "kib_per_puppet": (rss1 - rss0) / n,
        }

        timeline = Timeline(driver, [room, plain])
        await timeline.start()

        # 3. XMPP -> Matrix.
        xsender = await XUser(prosody, "xsender").connect()
        xusers.append(xsender)
        await xsender.join(muc, "xsender")
        ghost = bridge.ghost_user_id("xmpp", f"{muc}/xsender")
        while not bridge.hs.is_joined(room, ghost):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        wanted = [f"x2m {i}" for i in range(m)]
        profiler.start("x2m")
        cpu.start()
        start = time.monotonic()
        for body in wanted:
            xsender.xmpp.send_message(mto=JID(muc), mbody=body, mtype="groupchat")
        last = await wait_all(timeline.arrived, wanted, 600)
        bridge_s = (last - start) if last else float("nan")
        x2m_cpu = cpu.stop()
        profiler.stop("x2m")
        lost, dup, disorder = check(timeline.bodies, {ghost: wanted})
        # Synapse's ceiling: the same messages sent straight to Synapse, in order.
        await bridge.hs.ensure_joined(plain, ghost)
        wanted_c = [f"x2m ceiling {i}" for i in range(m)]
        cpu.start()
        start = time.monotonic()
        for i, body in enumerate(wanted_c):
            await bridge.hs.send(
                plain,
                "m.room.message",
                {"msgtype": "m.text", "body": body},
                txn_id=f"bench-ceiling-{i}",
                as_user=ghost,
            )
        last = await wait_all(timeline.arrived, wanted_c, 600)
        ceiling_s = (last - start) if last else float("nan")
        results["xmpp_to_matrix"] = {
            "bridge_msg_s": m / bridge_s,
            "synapse_msg_s": m / ceiling_s,
            "ratio": ceiling_s / bridge_s,
            "lost": lost,
            "duplicated": dup,
            "out_of_order": disorder,
            "cpu": x2m_cpu,
            "ceiling_cpu": cpu.stop(),
        }

        # 4. Matrix -> XMPP: K Matrix users in the portal send M messages.
        senders = []
        for i in range(k):
            c = synapse.new_client(f"sender{i}")
            await c.set_displayname(f"Sender {i}")
            await c.join(room)
            await c.join(plain)
            senders.append(c)
            clients.append(c)
        while owner.occupants(muc) < n + 3 + k:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        per = m // k

        async def send_all(c: MatrixClient, target: str, prefix: str) -> None:
            for j in range(per):
                await c.send_text(target, f"{prefix} {c.user_id} {j}")

        wanted_m = [f"m2x {c.user_id} {j}" for c in senders for j in range(per)]
        profiler.start("m2x")
        cpu.start()
        start = time.monotonic()
        await asyncio.gather(*(send_all(c, room, "m2x") for c in senders))
        last = await wait_all(owner.arrived, wanted_m, 600)
        bridge_s = (last - start) if last else float("nan")
        m2x_cpu = cpu.stop()
        profiler.stop("m2x")
        sent_by = {
            f"Sender {i}": [f"m2x {c.user_id} {j}" for j in range(per)]
            for i, c in enumerate(senders)
        }
        lost, dup, disorder = check(owner.bodies, sent_by)
        wanted_c = [f"m2x-ceiling {c.user_id} {j}" for c in senders for j in range(per)]
        cpu.start()
        start = time.monotonic()
        await asyncio.gather(*(send_all(c, plain, "m2x-ceiling") for c in senders))
        last = await wait_all(timeline.arrived, wanted_c, 600)
        ceiling_s = (last - start) if last else float("nan")
        results["matrix_to_xmpp"] = {
            "bridge_msg_s": per * k / bridge_s,
            "synapse_msg_s": per * k / ceiling_s,
            "ratio": ceiling_s / bridge_s,
            "lost": lost,
            "duplicated": dup,
            "out_of_order": disorder,
            "cpu": m2x_cpu,
            "ceiling_cpu": cpu.stop(),
        }
        results["sync_limited"] = timeline.limited
        await timeline.stop()
    finally:
        for c in clients:
            await c.close()
        for x in xusers:
            await x.close()
        if bridge is not None:
            await bridge.stop()
        prosody.stop()
        synapse.stop()
    results["loadavg"] = os.getloadavg()
    return results


def _cpu(c: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in c.items())


def report(r: dict[str, Any]) -> None:
    j, raw = r["joins"], r["raw"]
    load = ", ".join(f"{x:.1f}" for x in r["loadavg"])
    print(f"{r['n']} Matrix users as occupants of one MUC (Prosody, one XEP-0114 component); "
          f"{r['cores']} cores, load average {load}")  # fmt: skip
    print(f"  joined (bridge): {j['bridge_s']:.2f} s; seen by an XMPP user: "
          f"{j['seen_by_xmpp_s']:.2f} s; occupants {j['occupants']}; "
          f"all joined: {j['all_joined']}")  # fmt: skip
    print(f"  Prosody's floor (raw component socket, nothing parsed): joins {raw['joins_s']:.2f} s "
          f"({raw['joins_prosody_cpu_s']:.1f} s of Prosody CPU, {raw['mbytes']:.0f} MB sent to "
          f"the component); fan-out of messages to the {r['n']} occupants: "
          f"{raw['fanout_msg_s']:.1f} msg/s ({raw['fanout_prosody_cpu_s']:.1f} s of Prosody CPU "
          f"for {r['m']})")  # fmt: skip
    print(f"  CPU seconds while joining: {_cpu(r['joins_cpu'])}")
    print(f"  bridge memory: {j['kib_per_puppet']:.1f} KiB per puppet (RSS delta / N)")
    for key, title in (("xmpp_to_matrix", "XMPP -> Matrix"), ("matrix_to_xmpp", "Matrix -> XMPP")):
        t = r[key]
        print(f"  {title}: bridge {t['bridge_msg_s']:.1f} msg/s, Synapse alone "
              f"{t['synapse_msg_s']:.1f} msg/s: {100 * t['ratio']:.0f} %; lost {t['lost']}, "
              f"duplicated {t['duplicated']}, out of order {t['out_of_order']}")  # fmt: skip
        print(f"    CPU seconds, bridged: {_cpu(t['cpu'])}; Synapse alone: "
              f"{_cpu(t['ceiling_cpu'])}")  # fmt: skip
    if r.get("sync_limited"):
        print(f"  (the Matrix observer's /sync was limited {r['sync_limited']} times)")
    ok = (
        j["seen_by_xmpp_s"] < 10
        and r["xmpp_to_matrix"]["ratio"] >= 0.9
        and r["matrix_to_xmpp"]["ratio"] >= 0.9
    )
    print("  targets (< 10 s to join, >= 90 % of Synapse both ways):", "met" if ok else "NOT met")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-n", type=int, default=1000, help="Matrix users in the MUC")
    parser.add_argument("-m", type=int, default=500, help="messages each way")
    parser.add_argument("-k", type=int, default=10, help="Matrix senders")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--profile", choices=["joins", "x2m", "m2x"], help="cProfile a phase")
    parser.add_argument(
        "--prosody-config",
        default="",
        metavar="LUA",
        help="Lua added to both Prosodys' global settings, e.g. 'gc = { mode = \"incremental\" }'",
    )
    parser.add_argument(
        "--fanout",
        action="store_true",
        help="load contrib/prosody/mod_muc_bridge_fanout.lua on both Prosodys' MUC",
    )
    args = parser.parse_args()
    raise_fd_limit()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="xmpp-bench-") as tmp:
        os.chmod(tmp, 0o755)
        profiler = Profiler(args.profile)
        results = asyncio.run(
            run(args.n, args.m, args.k, Path(tmp), profiler, args.prosody_config, args.fanout)
        )
    report(results)
    profiler.report()
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
