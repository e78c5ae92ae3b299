"""The core's side of an operation: a NATS request to the owning shard, retried with the same
operation id until a worker answers (the worker dedups by that id)."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout

from bridge.connector import ConnectorError, NotSupported

from . import codec
from .subjects import op_subject

MAX_BACKOFF_S = 5.0


class Policy(enum.Enum):
    DURABLE = "durable"  # Matrix events: wait for a worker as long as it takes
    BOUNDED = "bounded"  # answers someone waits for (a lookup, a command): give up in time
    ONCE = "once"  # best effort (typing, receipts, metrics): one try


# The answer of a worker asked about a shard it no longer holds (an operation that reached it
# as it gave the shard up): asked again, like a shard nobody holds.
MOVED = "moved"


class _Moved(Exception):
    pass


class RemoteFailure(Exception):
    """The worker's connector raised something other than a ConnectorError."""


class Unreachable(ConnectorError):
    """No worker answered for the shard in time."""


Notify = Callable[[], Awaitable[None]]


class OpRequests:
    def __init__(
        self,
        nc: Client | None,
        log: logging.Logger,
        *,
        request_timeout_s: float,
        unowned_notice_s: float,
    ) -> None:
        self.nc = nc
        self.log = log
        self.request_timeout_s = request_timeout_s
        self.unowned_notice_s = unowned_notice_s

    async def publish(self, subject: str, message: dict[str, Any]) -> None:
        """Tell whoever listens, no answer awaited (lost while the bus is away)."""
        if self.nc is None:
            return
        try:
            await self.nc.publish(subject, codec.encode(message))
        except NatsError as e:
            self.log.info("%s not published: %s", subject, e)

    async def gather(
        self, subject: str, message: dict[str, Any], done: Callable[[list[Any]], bool], wait: float
    ) -> list[Any]:
        """Ask whoever listens and collect their answers until ``done(answers)`` or ``wait``
        seconds passed (best effort: what came by then; nothing while the bus is away)."""
        if self.nc is None:
            return []
        answers: list[Any] = []
        complete = asyncio.Event()

        async def on_answer(msg: Any) -> None:
            try:
                answers.append(codec.decode(msg.data))
            except codec.CodecError as e:
                self.log.error("a malformed answer on %s: %s", subject, e)
                return
            if done(answers):
                complete.set()

        try:
            inbox = self.nc.new_inbox()
            sub = await self.nc.subscribe(inbox, cb=on_answer)
        except NatsError as e:
            self.log.info("%s not asked: %s", subject, e)
            return []
        try:
            await self.nc.publish(subject, codec.encode(message), reply=inbox)
            await asyncio.wait_for(complete.wait(), wait)
        except TimeoutError:
            pass
        except NatsError as e:
            self.log.info("%s not asked: %s", subject, e)
        finally:
            try:
                await sub.unsubscribe()
            except NatsError:
                pass
        return list(answers)

    async def call(
        self,
        shard: str,
        request: dict[str, Any],
        *,
        op_id: str | None = None,
        policy: Policy = Policy.DURABLE,
        notify: Notify | None = None,
    ) -> Any:
        """Ask the shard's worker and return the connector's result (or raise its error)."""
        return await self.call_subject(
            op_subject(shard), request, op_id=op_id, policy=policy, notify=notify, what=shard
        )

    async def call_subject(
        self,
        subject: str,
        request: dict[str, Any],
        *,
        op_id: str | None = None,
        policy: Policy = Policy.DURABLE,
        notify: Notify | None = None,
        what: str = "",
    ) -> Any:
        if self.nc is None:
            raise Unreachable("the bridge is not connected to its workers yet")
        nc = self.nc
        request = {**request, "op_id": op_id or uuid.uuid4().hex}
        payload = codec.encode(request)
        started = time.monotonic()
        told = False
        backoff = 0.2
        timeout = self.request_timeout_s if policy is not Policy.ONCE else 5.0
        while True:
            try:
                reply = await nc.request(subject, payload, timeout=timeout)
                return self._result(codec.decode(reply.data))
            except _Moved:
                why = "the worker gave the shard up"
            except NoRespondersError:
                why = "no worker holds it"
            except NatsTimeout:
                why = "no answer in time"
            except ConnectionClosedError:
                why = "the bus is closed"
                if policy is Policy.DURABLE:
                    raise  # stopping: the event stays pending for the next start
            except NatsError as e:  # reconnecting, buffers full...
                why = f"{type(e).__name__}: {e}"
            waited = time.monotonic() - started
            if policy is Policy.ONCE or (
                policy is Policy.BOUNDED and waited >= self.request_timeout_s
            ):
                whom = f"connection worker for {what.rsplit('.', 1)[0]}" if what else "core"
                raise Unreachable(f"the bridge's {whom} is not reachable; try again later")
            self.log.info("%s %s: %s; retrying", request.get("method"), subject, why)
            if notify is not None and not told and waited >= self.unowned_notice_s:
                told = True
                try:
                    await notify()
                except Exception:
                    self.log.exception("could not tell the user of a delay")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    @staticmethod
    def _result(reply: Any) -> Any:
        if not isinstance(reply, dict):
            raise RemoteFailure(f"malformed answer {reply!r}")
        if "error" in reply:
            error = reply["error"]
            kind, message = str(error.get("type")), str(error.get("message"))
            if kind == MOVED:
                raise _Moved(message)
            if kind == "NotSupported":
                raise NotSupported(message)
            if kind == "ConnectorError":
                raise ConnectorError(message)
            raise RemoteFailure(message)
        return reply.get("ok")
