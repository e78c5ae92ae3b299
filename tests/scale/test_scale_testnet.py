"""Scale-out mode with the test network (a third-party plugin, unchanged): one core and two
workers through real NATS, PostgreSQL and Synapse. Text, edits, reactions, replies and
membership cross both ways; a retried operation is performed once; with no worker the
message waits, the sender is told, and it goes out once a worker is back; a worker's crash
moves the connector to the other worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bridge.connector import (
    MatrixMessage,
    MatrixSender,
    Membership,
    MessageContent,
    PortalKey,
    RemoteMembership,
    Sender,
)
from bridge.scale import codec
from bridge.scale.subjects import event_op_id
from bridge.testing.postgres import PostgresServer
from tests.harness.nats import NatsServer
from tests.harness.synapse import SynapseServer
from tests.helpers import command, management_room, new_user, until
from tests.scale.scale_setup import Deployment, new_database, recorded, scale_config


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
    )
    d = Deployment(config)
    try:
        yield d
    finally:
        await d.close()


async def test_one_core_two_workers(deployment: Deployment, synapse: SynapseServer) -> None:
    record = Path(deployment.config.parent / "sent.jsonl")
    core = await deployment.start_core()
    await deployment.start_worker("w1")
    await deployment.start_worker("w2")
    await until(lambda: deployment.holder("testnet"), 30, "a worker runs testnet")
    assert sum("testnet" in w.running for w in deployment.workers.values()) == 1
    # The core runs no connector of its own: its testnet is a proxy.
    assert type(core.connectors["testnet"]).__name__ == "TestNetConnectorProxy"

    alice = new_user(synapse)
    mgmt = await management_room(alice)
    await command(alice, mgmt, "login testnet alice-remote", "Logged in")
    await command(alice, mgmt, "join testnet #general-scale", "Invited you")
    room = await alice.join("#testnet_=23general-scale:localhost")

    # Text both ways.
    await alice.send_text(room, "hello remote")
    [plain] = await until(recorded(record, "message", text="hello remote"), 30)
    assert plain["as_"] == "alice-remote" and plain["relayed"] is False
    tn: Any = deployment.connector("testnet")
    bob_msg = await tn.remote_message("#general-scale", "bob", "hi from bob")
    evt = await alice.wait_for_event(room, lambda e: e["content"].get("body") == "hi from bob")
    assert evt["sender"] == "@testnet_bob:localhost"

    # Replies both ways.
    await alice.reply(room, evt["event_id"], "replying to bob")
    [rep] = await until(recorded(record, "message", text="replying to bob"), 30)
    assert rep["reply_to"] == bob_msg
    alice_evt = await alice.wait_for_event(
        room, lambda e: e["content"].get("body") == "hello remote"
    )
    await tn.remote_message("#general-scale", "bob", "bob answers", reply_to=plain["id"])
    answer = await alice.wait_for_event(room, lambda e: e["content"].get("body") == "bob answers")
    assert answer["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == alice_evt["event_id"]

    # Edits both ways.
    await alice.edit(room, alice_evt["event_id"], "hello remote (edited)")
    [edit] = await until(recorded(record, "edit", target=plain["id"]), 30)
    assert edit["text"] == "hello remote (edited)"
    await tn.remote_edit("#general-scale", "bob", bob_msg, "hi from bob, corrected")
    await alice.wait_for_event(
        room,
        lambda e: e["content"].get("m.new_content", {}).get("body") == "hi from bob, corrected",
    )

    # Reactions both ways.
    await alice.react(room, evt["event_id"], "👍")
    await until(recorded(record, "reaction", target=bob_msg, key="👍"), 30)
    await tn.remote_reaction("#general-scale", "bob", plain["id"], "🎉")
    bob_react = await alice.wait_for_event(
        room, lambda e: e["type"] == "m.reaction" and e["content"]["m.relates_to"]["key"] == "🎉"
    )
    assert bob_react["content"]["m.relates_to"]["event_id"] == alice_evt["event_id"]

    # Membership both ways: a remote user joins (their ghost joins the room); alice leaves.
    await tn.bridge.emit(
        RemoteMembership(
            portal=PortalKey("testnet", "#general-scale"),
            sender=Sender("carol", "Carol"),
            membership=Membership.JOIN,
        )
    )
    await until(lambda: _member(alice, room, "@testnet_carol:localhost"), 30, "carol joined")
    await alice.leave(room)
    await until(recorded(record, "membership", membership="leave"), 30)

    # Each Matrix event reached the network once.
    assert len(recorded(record, "message", text="hello remote")()) == 1
    assert len(recorded(record, "reaction", key="👍")()) == 1


async def _member(client: Any, room: str, user: str) -> bool:
    try:
        return user in await client.joined_members(room)
    except Exception:
        return False


async def test_retried_operation_runs_once(deployment: Deployment, synapse: SynapseServer) -> None:
    """The same operation id twice (a lost answer, a replay after a core crash): the network
    sees it once and both tries get the first answer."""
    record = Path(deployment.config.parent / "sent.jsonl")
    core = await deployment.start_core()
    await deployment.start_worker("w1")
    await until(lambda: deployment.holder("testnet"), 30)
    assert core.scale is not None
    msg = MatrixMessage(
        portal=PortalKey("testnet", "#dedup"),
        sender=MatrixSender("@x:localhost", "X", relayed=True),
        event_id="$retried-event",
        content=MessageContent("sent once"),
    )
    request = {"target": "relay", "user": None, "portal": msg.portal, "connector": "testnet"}
    request |= {"method": "handle_matrix_message", "args": [msg]}
    op_id = event_op_id("handle_matrix_message", msg.event_id)
    first, second = await asyncio.gather(
        core.scale.requests.call("testnet.main", request, op_id=op_id),
        core.scale.requests.call("testnet.main", request, op_id=op_id),
    )
    third = await core.scale.requests.call("testnet.main", request, op_id=op_id)
    assert first == second == third and first.remote_id
    assert len(recorded(record, "message", text="sent once")()) == 1
    # Another id is another operation.
    await core.scale.requests.call("testnet.main", request, op_id="another")
    assert len(recorded(record, "message", text="sent once")()) == 2
    assert codec.decode(codec.encode(first)) == first


async def test_no_worker_waits_across_a_core_restart_then_delivers_in_order(
    deployment: Deployment, synapse: SynapseServer
) -> None:
    record = Path(deployment.config.parent / "sent.jsonl")
    await deployment.start_core()
    await deployment.start_worker("w1")
    await until(lambda: deployment.holder("testnet"), 30)
    alice = new_user(synapse)
    mgmt = await management_room(alice)
    await command(alice, mgmt, "login testnet alice-remote", "Logged in")
    await command(alice, mgmt, "join testnet #wait", "Invited you")
    room = await alice.join("#testnet_=23wait:localhost")
    await alice.send_text(room, "before")
    await until(recorded(record, "message", text="before"), 30)

    await deployment.stop_worker("w1")  # nobody holds the shard now
    for n in range(3):
        await alice.send_text(room, f"while away {n}")
    await alice.wait_for_event(
        room, lambda e: "not available right now" in e["content"].get("body", ""), timeout=60
    )
    assert not recorded(record, "message", text="while away 0")()
    # The core restarts meanwhile: what waited is still pending, and waits again.
    await deployment.stop_core()
    await deployment.start_core()

    await deployment.start_worker("w2")
    await until(recorded(record, "message", text="while away 2"), 90)
    texts = [e["text"] for e in recorded(record, "message")()]
    assert texts == ["before", "while away 0", "while away 1", "while away 2"]


async def test_worker_crash_moves_the_connector(
    deployment: Deployment, synapse: SynapseServer
) -> None:
    record = Path(deployment.config.parent / "sent.jsonl")
    await deployment.start_core()
    await deployment.start_worker("w1")
    await until(lambda: deployment.holder("testnet"), 30)
    await deployment.start_worker("w2")
    first = deployment.holder("testnet")
    assert first is not None
    alice = new_user(synapse)
    mgmt = await management_room(alice)
    await command(alice, mgmt, "login testnet alice-remote", "Logged in")
    await command(alice, mgmt, "join testnet #move", "Invited you")
    room = await alice.join("#testnet_=23move:localhost")

    # A crash: leases are not given back, so the other worker waits for them to expire.
    crashed = next(n for n, w in deployment.workers.items() if w is first)
    began = time.monotonic()
    await deployment.stop_worker(crashed, release=False)
    await alice.send_text(room, "after the crash")
    await until(recorded(record, "message", text="after the crash"), 90)
    # The test network runs split: alice's shard may have been on the other worker all
    # along, and the main shard moves when its lease expires.
    await until(lambda: deployment.holder("testnet") not in (None, first), 90, "main moved")
    moved = deployment.holder("testnet")
    assert moved is not None
    print(f"connector moved to the other worker in {time.monotonic() - began:.1f} s")
    tn: Any = moved.running["testnet"].connector
    await tn.remote_message("#move", "bob", "from the new worker")
    await alice.wait_for_event(room, lambda e: e["content"].get("body") == "from the new worker")


async def test_webhooks_commands_and_http_routes_cross_the_bus(
    tmp_path: Path,
    synapse: SynapseServer,
    as_port: int,
    postgres: PostgresServer,
    nats_server: NatsServer,
) -> None:
    """A connector with room commands, plumbing and HTTP routes (webhooks): the core serves
    the routes on its port and the worker answers them."""
    from tests.webhooks.conftest import BOT, URL, body, post

    config = scale_config(
        tmp_path / "config.yaml",
        synapse,
        as_port,
        new_database(postgres),
        nats_server,
        {"webhooks": {}},
    )
    d = Deployment(config)
    try:
        await d.start_core()
        await d.start_worker("w1")
        await until(lambda: d.holder("webhooks"), 30)
        ivy = new_user(synapse)
        room = await ivy.create_room(
            invite=[BOT], power_level_content_override={"users": {BOT: 100}}
        )
        assert d.core is not None
        core = d.core
        await until(lambda: core.hs.is_joined(room, BOT), 30, "bot joined")
        await ivy.send_text(room, "!mimi link webhooks deploys")
        await ivy.wait_for_event(room, lambda e: e["sender"] == BOT and "Linked" in body(e))
        await ivy.send_text(room, "!mimi webhook create ci")
        reply = await ivy.wait_for_event(
            room, lambda e: e["sender"] == BOT and "Created the webhook" in body(e), timeout=30
        )
        m = URL.search(body(reply))
        assert m, body(reply)
        status, answer = await post(m.group(1), {"text": "deployed over the bus"})
        assert (status, answer["ok"]) == (200, True)
        await ivy.wait_for_event(room, lambda e: body(e) == "deployed over the bus", timeout=30)
        # In one step, in a room not bridged yet: the worker's connector asks the core to link
        # the room (BridgeAPI.link_room is Matrix logic: the core's).
        plain = await ivy.create_room(
            invite=[BOT], power_level_content_override={"users": {BOT: 100}}
        )
        await until(lambda: core.hs.is_joined(plain, BOT), 30, "bot joined")
        await ivy.send_text(plain, "!mimi webhook create alerts")
        made = await ivy.wait_for_event(
            plain, lambda e: e["sender"] == BOT and "Created the webhook" in body(e), timeout=30
        )
        assert "Bridged this room to webhooks" in body(made)
        portal = await core.portal_store.by_room(plain)
        assert portal is not None and portal.key.network == "webhooks"
        m2 = URL.search(body(made))
        assert m2, body(made)
        assert (await post(m2.group(1), {"text": "alert over the bus"}))[0] == 200
        await ivy.wait_for_event(plain, lambda e: body(e) == "alert over the bus", timeout=30)
        # With no worker, the route answers 503 in bounded time instead of hanging.
        await d.stop_worker("w1")
        status, _ = await post(m.group(1), {"text": "nobody home"})
        assert status == 503
    finally:
        await d.close()


async def test_redelivered_event_has_no_second_effect(
    deployment: Deployment, synapse: SynapseServer
) -> None:
    """The same remote event twice on the stream (published again after a lost ack with
    another message id, or delivered again after a core crash): one Matrix message. And the
    same message id twice: the stream keeps one."""
    from bridge.connector import RemoteMessage
    from bridge.scale.subjects import EVENTS_STREAM, events_subject

    await deployment.start_core()
    worker = await deployment.start_worker("w1")
    await until(lambda: deployment.holder("testnet"), 30)
    alice = new_user(synapse)
    mgmt = await management_room(alice)
    await command(alice, mgmt, "join testnet #twice", "Invited you")
    room = await alice.join("#testnet_=23twice:localhost")
    event = RemoteMessage(
        portal=PortalKey("testnet", "#twice"),
        sender=Sender("bob", "Bob"),
        id="twice-1",
        content=MessageContent("said once"),
    )
    assert worker.nc is not None
    js = worker.nc.jetstream()
    subject = events_subject("testnet")
    before = (await js.stream_info(EVENTS_STREAM)).state.messages
    await js.publish(subject, codec.encode(event), headers={"Nats-Msg-Id": "first"})
    again = await js.publish(subject, codec.encode(event), headers={"Nats-Msg-Id": "first"})
    assert again.duplicate
    await js.publish(subject, codec.encode(event), headers={"Nats-Msg-Id": "second"})
    assert (await js.stream_info(EVENTS_STREAM)).state.messages == before + 2
    tn: Any = deployment.connector("testnet")
    await tn.remote_message("#twice", "bob", "after")
    await alice.wait_for_event(room, lambda e: e["content"].get("body") == "after")
    events = await alice.messages(room, limit=100)
    assert [e["content"].get("body") for e in events].count("said once") == 1


async def test_connection_changes_on_a_worker_reach_the_user(
    deployment: Deployment, synapse: SynapseServer
) -> None:
    """A connector on a worker reports a user's connection: the core keeps the state and the
    management room is told once of the drop and once of the recovery."""
    from bridge.connector import ConnectionState

    await deployment.start_core()
    await deployment.start_worker("w1")
    await until(lambda: deployment.holder("testnet"), 30, "a worker runs testnet")
    ann = new_user(synapse)
    mgmt = await management_room(ann)
    await command(ann, mgmt, "login testnet ann-remote", "Logged in")
    tn: Any = deployment.connector("testnet")
    for _ in range(3):
        tn.set_connection(ann.user_id, "ann-remote", ConnectionState.DISCONNECTED, "reset")
        tn.set_connection(ann.user_id, "ann-remote", ConnectionState.CONNECTING)
    await ann.wait_for_event(mgmt, lambda e: "was lost" in e["content"].get("body", ""), 30)
    tn.set_connection(ann.user_id, "ann-remote", ConnectionState.CONNECTED)
    await ann.wait_for_event(mgmt, lambda e: "is back (" in e["content"].get("body", ""), 30)
    reply = await command(ann, mgmt, "list", "ann-remote: connected since")
    assert "UTC (" in reply
    bodies = [e["content"].get("body", "") for e in await ann.messages(mgmt, limit=50)]
    assert sum("was lost" in b for b in bodies) == 1
    assert sum("is back (" in b for b in bodies) == 1
