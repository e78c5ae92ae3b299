"""An operation that reaches a worker as it gives the shard up is answered ``moved`` and asked
again, like a shard nobody holds, instead of failing for the user."""

from __future__ import annotations

import logging

import nats
from nats.aio.msg import Msg

from bridge.scale import codec
from bridge.scale.op_requests import MOVED, OpRequests, Policy
from tests.harness.nats import NatsServer


async def test_moved_is_asked_again(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url, connect_timeout=5)
    seen: list[str] = []

    async def answer(msg: Msg) -> None:
        request = codec.decode(msg.data)
        seen.append(request["op_id"])
        if len(seen) == 1:
            reply = {"error": {"type": MOVED, "message": "net.7 moved"}}
        else:
            reply = {"ok": "done"}
        await msg.respond(codec.encode(reply))

    await nc.subscribe("mimi.op.net.7", cb=answer)
    requests = OpRequests(nc, logging.getLogger("test"), request_timeout_s=5, unowned_notice_s=60)
    try:
        result = await requests.call("net.7", {"method": "x"}, op_id="op1", policy=Policy.DURABLE)
        assert result == "done"
        assert seen == ["op1", "op1"]  # the same operation id: deduped where it runs
    finally:
        await nc.close()
