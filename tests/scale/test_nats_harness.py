"""The NATS harness: JetStream answers, and what it stored survives a restart."""

from __future__ import annotations

import asyncio

import nats
from nats.js.api import StreamConfig

from tests.harness.nats import NatsServer


async def test_jetstream_keeps_a_stream_across_restart(nats_server: NatsServer) -> None:
    nc = await nats_connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="probe", subjects=["probe.>"]))
    ack = await js.publish("probe.one", b"kept", headers={"Nats-Msg-Id": "m1"})
    again = await js.publish("probe.one", b"kept", headers={"Nats-Msg-Id": "m1"})
    assert ack.seq == 1 and again.duplicate
    await nc.close()

    await asyncio.to_thread(nats_server.restart)
    nc = await nats_connect(nats_server.url)
    info = await nc.jetstream().stream_info("probe")
    assert info.state.messages == 1
    await nc.close()


async def nats_connect(url: str) -> nats.NATS:
    return await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
