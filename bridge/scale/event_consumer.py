"""The core reads remote events from the stream and acks each once it is in Matrix."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from bridge.connector import RemoteEvent, RemoteMessage

from . import codec
from .subjects import CORE_CONSUMER, EVENTS_PREFIX, EVENTS_STREAM

# Taken from the stream and not acked yet, at most (the stream keeps the rest).
MAX_IN_FLIGHT = 1000
ACK_WAIT_S = 600.0
RESYNC_ATTEMPTS = 8

Submit = Callable[[RemoteEvent, Callable[[], Awaitable[None]]], None]


class EventConsumer:
    def __init__(self, js: JetStreamContext, submit: Submit, log: logging.Logger) -> None:
        self.js = js
        self.submit = submit
        self.log = log
        self._task: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._acks: set[asyncio.Task[None]] = set()
        self._resync: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._reset_consumer()
        sub = await self.js.pull_subscribe(
            f"{EVENTS_PREFIX}.>", durable=CORE_CONSUMER, stream=EVENTS_STREAM
        )
        self._task = asyncio.create_task(self._run(sub), name="scale:events")

    def resync(self) -> None:
        """The connection to NATS is back: events the server delivered while it was away
        never arrived, yet count as delivered, and would come again only after the ack wait.
        The consumer starts again at the first event not acked, so they come now (those
        being handled come twice: a redelivery has no second effect)."""
        if self._task is None or (self._resync is not None and not self._resync.done()):
            return
        self._resync = asyncio.create_task(self._resync_now(), name="scale:events-resync")

    async def _resync_now(self) -> None:
        for attempt in range(RESYNC_ATTEMPTS):
            try:
                await self._reset_consumer()
                return
            except NatsError as e:
                self.log.info("remote events: resync failed (%s); retrying", e)
                await asyncio.sleep(min(5.0, 0.5 * 2**attempt))
        self.log.warning(
            "remote events: could not resync after the bus came back; events delivered while"
            " it was away come again after %.0f s",
            ACK_WAIT_S,
        )

    async def _reset_consumer(self) -> None:
        """Recreate the consumer at the first event not acked: what a crash left in flight is
        delivered again now, before newer events, in stream order (a consumer left as it was
        would redeliver it only after its ack wait, behind newer events of its portal)."""
        start = None
        try:
            info = await self.js.consumer_info(EVENTS_STREAM, CORE_CONSUMER)
            start = info.ack_floor.stream_seq + 1 if info.ack_floor else 1
            await self.js.delete_consumer(EVENTS_STREAM, CORE_CONSUMER)
        except NotFoundError:
            pass
        config = ConsumerConfig(
            durable_name=CORE_CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_S,
            max_ack_pending=MAX_IN_FLIGHT,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start else DeliverPolicy.ALL,
            opt_start_seq=start,
            filter_subject=f"{EVENTS_PREFIX}.>",
        )
        await self.js.add_consumer(EVENTS_STREAM, config)
        if start:
            self.log.info("remote events: resuming at stream sequence %d", start)

    async def _run(self, sub: JetStreamContext.PullSubscription) -> None:
        while True:
            try:
                msgs = await sub.fetch(batch=100, timeout=5)
            except TimeoutError:
                # nats-py raises its own TimeoutError or, in some races, asyncio's plain one
                # (which ``except NatsTimeout`` misses: the loop ended, and no remote event
                # reached Matrix again until a restart).
                continue
            except asyncio.CancelledError:
                raise
            except NatsError as e:  # the bus is away: the stream keeps the events
                self.log.info("remote events: fetch failed (%s); retrying", e)
                await asyncio.sleep(1)
                continue
            except Exception:
                # Whatever the client raises, this loop is the only way events come in.
                self.log.exception("remote events: fetch failed; retrying")
                await asyncio.sleep(1)
                continue
            for msg in msgs:
                await self._slots.acquire()
                self._take(msg)

    def _take(self, msg: Msg) -> None:
        try:
            event = codec.decode(msg.data)
            if not isinstance(event, RemoteEvent):
                raise codec.CodecError(f"{type(event).__name__} is no remote event")
        except codec.CodecError as e:
            self.log.error("remote events: dropping a malformed event on %s: %s", msg.subject, e)
            self._slots.release()
            task = asyncio.create_task(self._ack(msg))
            self._acks.add(task)
            task.add_done_callback(self._acks.discard)
            return

        if isinstance(event, RemoteMessage) and event.fresh_id:
            event = dataclasses.replace(event, fresh_id=False)  # a redelivery: look it up

        async def done() -> None:
            self._slots.release()
            await self._ack(msg)

        self.submit(event, done)

    async def _ack(self, msg: Msg) -> None:
        try:
            await msg.ack()
        except NatsError as e:
            # Redelivered after the ack wait, then skipped as already bridged.
            self.log.info("remote events: ack lost (%s)", e)

    async def stop(self) -> None:
        """Take no more events; those taken finish (and are acked) in the bridge's queues."""
        task, self._task = self._task, None
        resync, self._resync = self._resync, None
        for t in (task, resync):
            if t is not None:
                t.cancel()
                await asyncio.gather(t, return_exceptions=True)
