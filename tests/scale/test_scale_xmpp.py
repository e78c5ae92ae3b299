"""Scale-out mode with the XMPP connector on a real Prosody, one core and two workers as
processes, through real NATS, PostgreSQL and Synapse: text both ways, an edit, a reaction, a
reply, membership both ways; then SIGKILL of the worker holding the XMPP component's shard:
the other worker takes the component over and numbered messages flow again both ways, none
lost or duplicated of those the bridge had received."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from slixmpp import JID

from tests.harness.nats import NatsServer
from tests.harness.postgres import PostgresServer
from tests.harness.prosody import ProsodyServer, start_prosody
from tests.harness.synapse import SynapseServer
from tests.helpers import until
from tests.scale.processes import WorkerProcess, core_process, count
from tests.scale.scale_setup import new_database, scale_config
from tests.xmpp.conftest import COMPONENT, SECRET, XClient, connector_config, unique
from tests.xmpp.test_e2e_synapse import (
    NS_REACTIONS,
    NS_REPLY,
    alias_of,
    body,
    from_nick,
    ghost_of,
    matrix_user,
    members,
    new_room,
    sid,
)


@pytest.fixture(scope="module")
def prosody(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProsodyServer]:
    server = start_prosody(tmp_path_factory.mktemp("prosody"), COMPONENT, SECRET)
    yield server
    server.stop()


@pytest.fixture
async def alice(prosody: ProsodyServer) -> AsyncIterator[XClient]:
    c = await XClient(prosody, unique("alice")).connect()
    yield c
    await c.close()


async def test_xmpp_one_core_two_workers(
    tmp_path: Path,
    synapse: SynapseServer,
    as_port: int,
    postgres: PostgresServer,
    nats_server: NatsServer,
    prosody: ProsodyServer,
    alice: XClient,
) -> None:
    xmpp = connector_config(prosody, media={"allow_private_addresses": True})
    config = scale_config(
        tmp_path / "config.yaml",
        synapse,
        as_port,
        new_database(postgres),
        nats_server,
        {"xmpp": xmpp},
    )
    core = await core_process(config, as_port)
    workers = [WorkerProcess(config, "a"), WorkerProcess(config, "b")]
    name = f"Ann{uuid.uuid4().hex[:6]}"
    ann = await matrix_user(synapse, name)
    try:
        for w in workers:
            await w.start()

        async def one_runs() -> bool:
            return sum(w.runs("xmpp") for w in workers) == 1

        await until(one_runs, 60, "a worker runs xmpp")
        muc = new_room(prosody)
        await alice.join(muc, "alice")
        room = await ann.join(alias_of(muc))
        # Ann's puppet joins the MUC.
        await alice.wait_presence(from_nick(muc, name), timeout=60)

        # Text both ways.
        ghost = ghost_of(f"{muc}/alice")
        msg = alice.xmpp.make_message(mto=muc, mbody="helo", mtype="groupchat")
        msg["id"] = msg["origin_id"]["id"] = unique("a")
        msg.send()
        original = await ann.wait_for_event(room, lambda e: body(e) == "helo", timeout=60)
        assert original["sender"] == ghost
        seen = await alice.wait_message(lambda m: m["body"] == "helo")
        mine = await ann.send_text(room, "from matrix")
        first = await alice.wait_message(lambda m: m["body"] == "from matrix", timeout=60)
        assert str(first["from"]) == f"{muc}/{name}"
        # Edits both ways.
        fix = alice.xmpp.make_message(mto=muc, mbody="hello", mtype="groupchat")
        fix["replace"]["id"] = msg["id"]
        fix.send()
        edit = await ann.wait_for_event(
            room,
            lambda e: e["content"].get("m.new_content", {}).get("body") == "hello",
            timeout=60,
        )
        assert edit["content"]["m.relates_to"]["event_id"] == original["event_id"]
        await ann.edit(room, mine, "from matrix!")
        corr = await alice.wait_message(lambda m: m["body"] == "from matrix!", timeout=60)
        assert corr["replace"]["id"] == first["id"]
        # A reaction.
        await ann.react(room, original["event_id"], "👍")
        got_r = await alice.wait_message(
            lambda m: m.xml.find(NS_REACTIONS) is not None and from_nick(muc, name)(m),
            timeout=60,
        )
        assert got_r["reactions"]["id"] == sid(seen)
        # A reply.
        await ann.send_text(
            room,
            "agreed",
            **{"m.relates_to": {"m.in_reply_to": {"event_id": original["event_id"]}}},
        )
        rep = await alice.wait_message(
            lambda m: m.xml.find(NS_REPLY) is not None and from_nick(muc, name)(m), timeout=60
        )
        assert rep["reply"]["id"] == sid(seen)
        # An XMPP user joining and leaving the MUC shows in Matrix.
        carl = await XClient(prosody, unique("carl")).connect()
        carl_ghost = ghost_of(f"{muc}/carl")
        try:
            await carl.join(muc, "carl")

            async def carl_in() -> bool:
                return carl_ghost in await members(ann, room)

            await until(carl_in, 60, "carl's ghost joined")
            carl.xmpp.plugin["xep_0045"].leave_muc(JID(muc), "carl")

            async def carl_out() -> bool:
                return carl_ghost not in await members(ann, room)

            await until(carl_out, 60, "carl's ghost left")
        finally:
            await carl.close()

        # SIGKILL of the worker holding the component: the other one takes it over.
        holder = next(w for w in workers if w.runs("xmpp"))
        other = next(w for w in workers if w is not holder)
        to_x: list[int] = []
        to_m: list[int] = []
        n_m = n_x = 0
        for _ in range(5):
            n_m += 1
            to_x.append(n_m)
            await ann.send_text(room, f"m2x {n_m}")
            n_x += 1
            to_m.append(n_x)
            alice.xmpp.send_message(mto=JID(muc), mbody=f"x2m {n_x}", mtype="groupchat")
            await asyncio.sleep(0.3)
        await ann.wait_for_event(room, lambda e: body(e) == f"x2m {n_x}", timeout=60)
        began = time.monotonic()
        await holder.kill()
        # Matrix -> XMPP meanwhile: the core keeps them and retries.
        for _ in range(5):
            n_m += 1
            to_x.append(n_m)
            await ann.send_text(room, f"m2x {n_m}")
            await asyncio.sleep(0.3)

        async def moved() -> bool:
            return other.runs("xmpp")

        await until(moved, 120, "the other worker runs xmpp")
        print(f"worker SIGKILL: XMPP connector running on the other worker after"
              f" {time.monotonic() - began:.1f} s")  # fmt: skip
        # XMPP -> Matrix again once the bridge is back in the MUC: probes (not counted) until
        # one arrives, so that what is counted is what the bridge could receive.
        for k in range(60):
            alice.xmpp.send_message(mto=JID(muc), mbody=f"probe {k}", mtype="groupchat")
            try:
                await ann.wait_for_event(room, lambda e: body(e).startswith("probe "), timeout=2)
                break
            except (AssertionError, TimeoutError):
                continue
        for _ in range(5):
            n_m += 1
            to_x.append(n_m)
            await ann.send_text(room, f"m2x {n_m}")
            n_x += 1
            to_m.append(n_x)
            alice.xmpp.send_message(mto=JID(muc), mbody=f"x2m {n_x}", mtype="groupchat")
            await asyncio.sleep(0.3)

        def on_xmpp() -> list[int]:
            return [
                int(m["body"].split()[1])
                for m in alice.messages
                if from_nick(muc, name)(m)
                and str(m["body"]).startswith("m2x ")
                and not m["replace"]["id"]
            ]

        async def on_matrix() -> list[int]:
            return [
                int(body(e).split()[1])
                for e in await ann.messages(room, limit=1000)
                if e["type"] == "m.room.message" and body(e).startswith("x2m ")
            ]

        end = time.monotonic() + 120
        while time.monotonic() < end:
            if set(to_x) <= set(on_xmpp()) and set(to_m) <= set(await on_matrix()):
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)  # doubles, if any, have come by now
        to_xmpp, to_matrix = count(to_x, on_xmpp()), count(to_m, await on_matrix())
        print(f"worker SIGKILL: Matrix->XMPP {to_xmpp}; XMPP->Matrix {to_matrix}")
        logs = "".join(f"\nworker {w.name}:\n{w.tail()}" for w in workers)
        for what, c in (("Matrix->XMPP", to_xmpp), ("XMPP->Matrix", to_matrix)):
            assert (c.lost, c.duplicated) == (0, 0), f"{what}: {c}{logs}"
    finally:
        await core.stop()
        for w in workers:
            await w.stop()
        await ann.close()
