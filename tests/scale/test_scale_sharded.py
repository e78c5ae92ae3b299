"""A connector that runs split (``ShardedConnector``, the test network): one core and two
workers through real NATS, PostgreSQL and Synapse. Both workers hold user shards of the
network and run an instance for their users; each user's messages cross both ways once,
through the instance holding the user. A worker crashes (its leases are left to expire, as
after SIGKILL): the other worker's users go on meanwhile, and the crashed worker's users'
messages flow again once their shards moved, none lost or duplicated. The second test does
the same with the core and the workers as processes, and a real SIGKILL."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bridge.scale import codec
from bridge.scale.shards import shard_of
from bridge.scale.worker import Worker
from bridge.testing.postgres import PostgresServer
from bridge.testing.synapse import MatrixClient
from tests.harness.nats import NatsServer
from tests.harness.synapse import SynapseServer
from tests.helpers import command, management_room, new_user, until
from tests.scale.processes import WorkerProcess, core_process
from tests.scale.scale_setup import Deployment, new_database, recorded, scale_config

NETWORK = "testnet"
TTL = 6.0


@pytest.fixture
async def deployment(
    tmp_path: Path,
    synapse: SynapseServer,
    as_port: int,
    postgres: PostgresServer,
    nats_server: NatsServer,
) -> AsyncIterator[Deployment]:
    config = scale_config(
        tmp_path / "config.yaml",
        synapse,
        as_port,
        new_database(postgres),
        nats_server,
        {"testnet": {"record_file": str(tmp_path / "sent.jsonl")}},
        lease_ttl_s=TTL,
        lease_renew_s=1,
    )
    d = Deployment(config)
    try:
        yield d
    finally:
        await d.close()


def _owned(worker: Worker) -> frozenset[str]:
    assert worker.leases is not None
    return worker.leases.owned()


def _user_shards(worker: Worker) -> set[str]:
    return {s for s in _owned(worker) if s.startswith(f"{NETWORK}.") and s != f"{NETWORK}.main"}


def _holder_of(d: Deployment, user_id: str) -> str | None:
    return d.split_holder("testnet", NETWORK, user_id)


class User:
    def __init__(self, client: MatrixClient, name: str) -> None:
        self.client = client
        self.name = name
        self.remote = f"{name}-remote"
        self.room = ""  # the shared room
        self.dm = ""  # the DM with the remote user "pal"
        self.mgmt = ""


async def _dm(d: Deployment, user: User, text: str) -> None:
    """A remote message to the user's own connection: sent by the instance holding them."""
    worker = d.workers[_holder_of(d, user.client.user_id) or ""]
    tn: Any = worker.running["testnet"].connector
    await tn.remote_message("pal", "pal", text, receiver=user.client.user_id)


async def _count(client: MatrixClient, room: str, body: str) -> int:
    events = await client.messages(room, limit=200)
    return [e["content"].get("body") for e in events].count(body)


async def test_users_split_across_workers_and_a_crash_moves_only_its_shards(
    deployment: Deployment, synapse: SynapseServer
) -> None:
    d = deployment
    record = Path(d.config.parent / "sent.jsonl")
    await d.start_core()
    await d.start_worker("w1")
    await d.start_worker("w2")
    # Both workers hold user shards of the network (the lease bucket's word), and between
    # them every shard once.
    await until(lambda: all(_user_shards(w) for w in d.workers.values()), 60, "both hold shards")
    await until(lambda: d.shared_out(NETWORK), 60, "shards shared out")
    assert sum(f"{NETWORK}.main" in _owned(w) for w in d.workers.values()) == 1
    assert all("testnet" in w.running for w in d.workers.values())

    # Matrix users until each worker has at least two of them.
    users: list[User] = []
    while min(sum(_holder_of(d, u.client.user_id) == w for u in users) for w in d.workers) < 2:
        assert len(users) < 16, "the user ids do not spread"
        client = new_user(synapse, "shard")
        users.append(User(client, client.user_id[1:].split(":")[0]))
    placed = {u.name: _holder_of(d, u.client.user_id) for u in users}
    print("users per worker:", placed)

    for u in users:
        u.mgmt = mgmt = await management_room(u.client)
        await command(u.client, mgmt, f"login testnet {u.remote}", "Logged in")
        await command(u.client, mgmt, "join testnet #split", "Invited you")
        u.room = await u.client.join("#testnet_=23split:localhost")

    async def both_ways(tag: str, group: list[User]) -> None:
        for u in group:
            await u.client.send_text(u.room, f"{tag} room from {u.name}")
            await _dm(d, u, f"{tag} dm to {u.name}")
        for u in group:
            await until(recorded(record, "message", text=f"{tag} room from {u.name}"), 90)
            if not u.dm:
                portal = await until(lambda u=u: _dm_portal(d, u), 90, "the DM portal")
                u.dm = portal
                await u.client.join(u.dm)
            await u.client.wait_for_event(
                u.dm, lambda e, u=u: e["content"].get("body") == f"{tag} dm to {u.name}", 60
            )
            await u.client.send_text(u.dm, f"{tag} dm from {u.name}")
        for u in group:
            await until(recorded(record, "message", text=f"{tag} dm from {u.name}"), 90)

    await both_ways("before", users)
    for u in users:
        [sent] = recorded(record, "message", text=f"before room from {u.name}")()
        assert sent["as_"] == u.remote and sent["relayed"] is False
        [dm] = recorded(record, "message", text=f"before dm from {u.name}")()
        assert dm["as_"] == u.remote and dm["room"] == "pal"

    # An operation reaching a worker for a shard it does not hold is answered "moved" (the
    # core asks again), never performed.
    one = d.workers["w1"]
    elsewhere = next(s for s in sorted(_all_shards()) if s not in _owned(one))
    fake = _FakeMsg(f"mimi.op.{elsewhere}", {"connector": "testnet", "method": "login"})
    await one._answer(fake)  # type: ignore[arg-type]
    assert fake.answer == {"error": {"type": "moved", "message": f"{elsewhere} moved"}}

    # A crash of the worker holding the main shard: its keys are left to expire.
    victim = next(n for n, w in d.workers.items() if f"{NETWORK}.main" in _owned(w))
    survivor = next(n for n in d.workers if n != victim)
    kept = d.workers[survivor]
    instance = kept.running["testnet"].connector
    shards_before = set(_owned(kept))
    lost = set(_owned(d.workers[victim]))
    theirs = [u for u in users if placed[u.name] == victim]
    ours = [u for u in users if placed[u.name] == survivor]
    began = time.monotonic()
    await d.stop_worker(victim, release=False)

    # The survivor's users are not affected: their DMs cross both ways before the crashed
    # worker's leases could even expire.
    await both_ways("during", ours)
    print(f"survivor's users both ways in {time.monotonic() - began:.1f} s after the crash")
    # The crashed worker's users: their messages wait and flow once the shards moved.
    for u in theirs:
        await u.client.send_text(u.room, f"after room from {u.name}")
        await u.client.send_text(u.dm, f"after dm from {u.name}")
    for u in theirs:
        await until(recorded(record, "message", text=f"after room from {u.name}"), 90)
        await until(recorded(record, "message", text=f"after dm from {u.name}"), 90)
    print(f"crashed worker's users sent again {time.monotonic() - began:.1f} s after the crash")
    await until(lambda: _owned(kept) >= lost, 60, "every shard moved")
    for u in theirs:
        assert _holder_of(d, u.client.user_id) == survivor
        await _dm(d, u, f"after dm to {u.name}")
    for u in theirs:
        await u.client.wait_for_event(
            u.dm, lambda e, u=u: e["content"].get("body") == f"after dm to {u.name}", 60
        )

    # Only the crashed worker's shards moved: the survivor's instance ran on, same object.
    assert kept.running["testnet"].connector is instance
    assert _owned(kept) >= shards_before
    # Nothing lost, nothing twice.
    for u in users:
        tags = ["before", "during"] if u in ours else ["before"]
        for tag in tags:
            assert len(recorded(record, "message", text=f"{tag} room from {u.name}")()) == 1
            assert len(recorded(record, "message", text=f"{tag} dm from {u.name}")()) == 1
            assert await _count(u.client, u.dm, f"{tag} dm to {u.name}") == 1
    for u in theirs:
        assert len(recorded(record, "message", text=f"after room from {u.name}")()) == 1
        assert len(recorded(record, "message", text=f"after dm from {u.name}")()) == 1
        assert await _count(u.client, u.dm, f"after dm to {u.name}") == 1
    # Logging out reaches the instance holding the user too (it refuses others).
    for u in users:
        await command(u.client, u.mgmt, "logout testnet", "Logged out")


async def _dm_portal(d: Deployment, u: User) -> str | None:
    from bridge.connector import PortalKey

    assert d.core is not None
    portal = await d.core.portal_store.get(PortalKey(NETWORK, "pal", u.client.user_id))
    return portal.room_id if portal is not None and portal.room_id else None


# --- the same as processes, with a real SIGKILL -----------------------------------------------

_HELD = re.compile(r"shard (testnet\.\w+) of testnet (held|given up) here")


def _log_shards(worker: WorkerProcess) -> set[str]:
    """The shards a worker process says it holds, by its log."""
    held: set[str] = set()
    for shard, what in _HELD.findall(worker.text()):
        (held.add if what == "held" else held.discard)(shard)
    return held


async def test_sigkill_of_a_worker_process_moves_only_its_users(
    tmp_path: Path,
    synapse: SynapseServer,
    as_port: int,
    postgres: PostgresServer,
    nats_server: NatsServer,
) -> None:
    record = tmp_path / "sent.jsonl"
    inbox = tmp_path / "inbox.jsonl"
    config = scale_config(
        tmp_path / "config.yaml",
        synapse,
        as_port,
        new_database(postgres),
        nats_server,
        {"testnet": {"record_file": str(record), "inbox_file": str(inbox)}},
        lease_ttl_s=TTL,
        lease_renew_s=1,
    )
    core = await core_process(config, as_port)
    workers = {n: WorkerProcess(config, n) for n in ("a", "b")}
    ids = itertools.count(1)

    def deliver(user: User, text: str) -> None:
        """The network delivers a DM from "pal" to the user's own connection."""
        line = {"room": "pal", "user": "pal", "text": text, "receiver": user.client.user_id}
        with inbox.open("a", encoding="utf-8") as f:
            f.write(json.dumps({**line, "id": f"inbox-{next(ids)}"}) + "\n")

    def holder(user: User) -> str | None:
        shard = shard_of(NETWORK, user.client.user_id)
        return next((n for n, w in workers.items() if shard in _log_shards(w)), None)

    everything = {f"{NETWORK}.{n}" for n in range(256)} | {f"{NETWORK}.main"}
    try:
        for w in workers.values():
            await w.start()

        def settled() -> bool:
            held = [_log_shards(w) for w in workers.values()]
            return (
                all(h - {f"{NETWORK}.main"} for h in held)
                and set().union(*held) == everything
                and sum(map(len, held)) == len(everything)
            )

        await until(settled, 90, "every shard held once, by both workers")
        users: list[User] = []
        while min(sum(holder(u) == n for u in users) for n in workers) < 2:
            assert len(users) < 16, "the user ids do not spread"
            client = new_user(synapse, "killed")
            users.append(User(client, client.user_id[1:].split(":")[0]))
        placed = {u.name: holder(u) for u in users}
        print("users per worker process:", placed)
        pal = "@testnet_pal:localhost"
        for u in users:
            mgmt = await management_room(u.client)
            await command(u.client, mgmt, f"login testnet {u.remote}", "Logged in")
            await command(u.client, mgmt, "join testnet #killed", "Invited you")
            u.room = await u.client.join("#testnet_=23killed:localhost")
            # A DM opened from Matrix: open_dm goes to the user's instance.
            u.dm = await u.client.create_room(invite=[pal], is_direct=True)
            await until(lambda u=u: _is_member(u.client, u.dm, pal), 60, "pal in the DM")

        async def both_ways(tag: str, group: list[User]) -> None:
            for u in group:
                await u.client.send_text(u.room, f"{tag} room from {u.name}")
                await u.client.send_text(u.dm, f"{tag} dm from {u.name}")
                deliver(u, f"{tag} dm to {u.name}")
            for u in group:
                for where in ("room", "dm"):
                    text = f"{tag} {where} from {u.name}"
                    await until(recorded(record, "message", text=text), 90, text)
                await u.client.wait_for_event(
                    u.dm, lambda e, u=u: e["content"].get("body") == f"{tag} dm to {u.name}", 60
                )

        await both_ways("before", users)
        victim = next(n for n, w in workers.items() if f"{NETWORK}.main" in _log_shards(w))
        survivor = next(n for n in workers if n != victim)
        theirs = [u for u in users if placed[u.name] == victim]
        ours = [u for u in users if placed[u.name] == survivor]
        lost = _log_shards(workers[victim])
        kept_log = len(workers[survivor].text())
        began = time.monotonic()
        await workers[victim].kill()  # SIGKILL: its leases expire, nothing is handed over

        await both_ways("during", ours)
        print(f"survivor's users both ways {time.monotonic() - began:.1f} s after SIGKILL")
        for u in theirs:
            await u.client.send_text(u.room, f"after room from {u.name}")
            await u.client.send_text(u.dm, f"after dm from {u.name}")
        for u in theirs:
            for where in ("room", "dm"):
                text = f"after {where} from {u.name}"
                await until(recorded(record, "message", text=text), 90, text)
        print(f"killed worker's users sent again {time.monotonic() - began:.1f} s after SIGKILL")
        await until(lambda: _log_shards(workers[survivor]) >= lost, 60, "every shard moved")
        for u in theirs:
            deliver(u, f"after dm to {u.name}")
        for u in theirs:
            await u.client.wait_for_event(
                u.dm, lambda e, u=u: e["content"].get("body") == f"after dm to {u.name}", 60
            )

        # Only the killed worker's shards moved: the survivor gave none up and never
        # restarted its instance.
        since = workers[survivor].text()[kept_log:]
        assert "given up here" not in since and "connector testnet st" not in since
        for u in users:
            tags = ["before", "during"] if u in ours else ["before", "after"]
            for tag in tags:
                for where in ("room", "dm"):
                    text = f"{tag} {where} from {u.name}"
                    assert len(recorded(record, "message", text=text)()) == 1, text
                    [sent] = recorded(record, "message", text=text)()
                    assert sent["as_"] == u.remote
                assert await _count(u.client, u.dm, f"{tag} dm to {u.name}") == 1
    finally:
        for w in workers.values():
            await w.stop()
        await core.stop()


async def _is_member(client: MatrixClient, room: str, user: str) -> bool:
    try:
        return user in await client.joined_members(room)
    except Exception:
        return False


def _all_shards() -> set[str]:
    return {f"{NETWORK}.{n}" for n in range(256)} | {f"{NETWORK}.main"}


class _FakeMsg:
    def __init__(self, subject: str, request: dict[str, Any]) -> None:
        self.subject = subject
        self.data = codec.encode({**request, "op_id": "fake", "args": []})
        self.answer: Any = None

    async def respond(self, data: bytes) -> None:
        self.answer = codec.decode(data)
