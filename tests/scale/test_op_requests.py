"""An operation that reaches a worker as it gives the shard up is answered ``moved`` and asked
again, like a shard nobody holds, instead of failing for the user."""

from __future__ import annotations

import logging
import time
from typing import Any

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


async def test_gather_collects_every_answer(nats_server: NatsServer) -> None:
    """The metrics' question to every instance: answers until all are in, or the wait; a
    malformed answer is skipped, not fatal."""
    nc = await nats.connect(nats_server.url, connect_timeout=5)

    def instance(shards: list[str]) -> Any:
        async def answer(msg: Msg) -> None:
            await msg.respond(codec.encode({"shards": shards}))

        return answer

    async def garbage(msg: Msg) -> None:
        await msg.respond(b"\xff not json")

    await nc.subscribe("mimi.states.net", cb=instance(["net.0"]))
    await nc.subscribe("mimi.states.net", cb=instance(["net.1", "net.main"]))
    await nc.subscribe("mimi.states.net", cb=garbage)
    requests = OpRequests(nc, logging.getLogger("test"), request_timeout_s=5, unowned_notice_s=60)
    wanted = {"net.0", "net.1", "net.main"}

    def complete(answers: list[Any]) -> bool:
        return wanted <= {s for a in answers for s in a["shards"]}

    try:
        began = time.monotonic()
        answers = await requests.gather("mimi.states.net", {}, complete, 5.0)
        assert sorted(s for a in answers for s in a["shards"]) == sorted(wanted)
        assert time.monotonic() - began < 2.5  # not the whole wait: every shard answered
        # Nobody holds net.2: what came, after the wait.
        began = time.monotonic()
        wanted.add("net.2")
        answers = await requests.gather("mimi.states.net", {}, complete, 0.5)
        assert len(answers) == 2
        assert time.monotonic() - began >= 0.5
        # Nobody listens at all.
        assert await requests.gather("mimi.states.other", {}, complete, 0.2) == []
    finally:
        await nc.close()
