"""The core's consumer of the remote events' stream (real nats-server): an event the server
delivered but that was never acked (the bus went away as it was delivered, so it never
arrived) comes again as soon as the connection is back, not after the ack wait (10 min)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import nats

from bridge.connector import MessageContent, PortalKey, RemoteEvent, RemoteMessage, Sender
from bridge.scale import bus, codec
from bridge.scale.event_consumer import ACK_WAIT_S, EventConsumer
from tests.harness.nats import NatsServer
from tests.helpers import until


def _message(remote_id: str) -> RemoteMessage:
    return RemoteMessage(
        portal=PortalKey("net", "#room"),
        sender=Sender("carol"),
        id=remote_id,
        content=MessageContent(text=remote_id),
    )


async def test_resync_delivers_unacked_events_at_once(nats_server: NatsServer) -> None:
    assert ACK_WAIT_S >= 60  # what a delivery lost in transit would otherwise wait
    nc = await nats.connect(nats_server.url, connect_timeout=5)
    js = nc.jetstream()
    await bus.ensure_events_stream(js)
    got: list[tuple[str, Callable[[], Awaitable[None]]]] = []

    def submit(event: RemoteEvent, done: Callable[[], Awaitable[None]]) -> None:
        assert isinstance(event, RemoteMessage)
        got.append((event.id, done))

    def ids() -> list[str]:
        return [i for i, _ in got]

    consumer = EventConsumer(js, submit, logging.getLogger("test"))
    await consumer.start()
    try:
        await js.publish("mimi.events.net", codec.encode(_message("a")))
        await until(lambda: ids() == ["a"], 30, "the first delivery")
        consumer.resync()  # the connection came back; "a" was never acked
        await until(lambda: ids() == ["a", "a"], 30, "the unacked event delivered again")
        await js.publish("mimi.events.net", codec.encode(_message("b")))
        await until(lambda: ids() == ["a", "a", "b"], 30, "the next event")
        for _, done in got:
            await done()
        await nc.flush()
        # Everything acked: a resync brings nothing again.
        consumer.resync()
        await asyncio.sleep(1.5)
        assert ids() == ["a", "a", "b"]
        await js.publish("mimi.events.net", codec.encode(_message("c")))
        await until(lambda: ids() == ["a", "a", "b", "c"], 30, "an event after the resync")
    finally:
        await consumer.stop()
        await nc.close()


class _Flaky:
    """A pull subscription raising what nats-py's fetch raises in its races: asyncio's plain
    TimeoutError, then something unexpected, before events come."""

    def __init__(self, msgs: list[Any]) -> None:
        self.calls = 0
        self.msgs = msgs

    async def fetch(self, batch: int, timeout: float) -> list[Any]:  # noqa: ASYNC109
        self.calls += 1
        if self.calls == 1:
            raise TimeoutError
        if self.calls == 2:
            raise RuntimeError("unexpected")
        if self.calls == 3:
            return self.msgs
        await asyncio.sleep(0.05)
        raise TimeoutError


async def test_the_fetch_loop_outlives_whatever_fetch_raises() -> None:
    got: list[str] = []

    def submit(event: RemoteEvent, done: Callable[[], Awaitable[None]]) -> None:
        assert isinstance(event, RemoteMessage)
        got.append(event.id)

    msg = SimpleNamespace(data=codec.encode(_message("a")), subject="mimi.events.net")
    consumer = EventConsumer(SimpleNamespace(), submit, logging.getLogger("test"))  # type: ignore[arg-type]
    sub = _Flaky([msg])
    task = asyncio.create_task(consumer._run(sub))  # type: ignore[arg-type]
    try:
        await until(lambda: got == ["a"], 10, "the event after the errors")
        await until(lambda: sub.calls >= 5, 10, "fetching on")
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
