"""What a connector on a worker sees of the bridge: the same ``BridgeAPI`` as on the core.

``emit`` publishes to the event stream, in order, with a message id; everything else reads
PostgreSQL and asks the homeserver directly (through a core object that is never started:
its stores and homeserver client), so connectors keep working while the core restarts."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from typing import TYPE_CHECKING, Any

from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from bridge.connector import (
    Attachment,
    ConnectionChange,
    Login,
    MatrixUser,
    PortalKey,
    RemoteEdit,
    RemoteEvent,
    RemoteMessage,
    RemoteReaction,
)

from . import codec
from .op_requests import OpRequests, Policy
from .subjects import CORE_API, events_subject, keys_subject

if TYPE_CHECKING:
    from bridge.bridge import Bridge

PUBLISH_BACKOFF_MAX_S = 2.0


def message_id(event: RemoteEvent) -> str:
    """The stream's dedup id: the remote id where the network gives one (IRCv3 ``msgid``, an
    XMPP stanza id: what the connector puts in ``id``), else one assigned on receipt."""
    stable = None
    if isinstance(event, RemoteMessage):
        stable = ("msg", event.id)
    elif isinstance(event, RemoteEdit | RemoteReaction) and event.id:
        stable = (type(event).__name__, event.id)
    if stable is None:
        return uuid.uuid4().hex
    p = event.portal
    text = "\0".join((p.network, p.receiver, p.remote_id, *stable))
    return hashlib.sha256(text.encode()).hexdigest()[:40]


class Publisher:
    """Publishes remote events one after another, in emit order, retrying while the bus is
    away (the event waits in memory meanwhile)."""

    def __init__(self, js: JetStreamContext, log: logging.Logger) -> None:
        self.js = js
        self.log = log
        self._queue: asyncio.Queue[tuple[str, bytes, str]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scale:publish")

    def put(self, event: RemoteEvent) -> None:
        self._queue.put_nowait(
            (events_subject(event.portal.network), codec.encode(event), message_id(event))
        )

    async def _run(self) -> None:
        while True:
            subject, payload, msg_id = await self._queue.get()
            backoff = 0.1
            while True:
                try:
                    await self.js.publish(
                        subject, payload, timeout=10, headers={"Nats-Msg-Id": msg_id}
                    )
                    break
                except NatsError as e:
                    # The same message id again: the stream drops a copy it already stored.
                    self.log.info("publishing a remote event failed (%s); retrying", e)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, PUBLISH_BACKOFF_MAX_S)
            self.published += 1
            self._queue.task_done()

    async def flush(self, limit_s: float) -> None:
        try:
            await asyncio.wait_for(self._queue.join(), limit_s)
        except TimeoutError:
            self.log.warning("%d remote events not published at stop", self._queue.qsize())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class WorkerAPI:
    """``BridgeAPI`` for connectors on a worker."""

    def __init__(self, helper: Bridge, publisher: Publisher, requests: OpRequests) -> None:
        self._helper = helper
        self._publisher = publisher
        self._requests = requests
        self.domain = helper.domain
        self.log = helper.log
        # Users' connection changes, for the core (which tells them), one after the other.
        self._changes: asyncio.Queue[ConnectionChange] = asyncio.Queue()
        self._changer: asyncio.Task[None] | None = None

    async def emit(self, event: RemoteEvent) -> None:
        self._publisher.put(event)

    async def notify(self, user_id: str, text: str, portal: PortalKey | None = None) -> None:
        await self._helper.notify(user_id, text, portal)

    async def matrix_user(self, user_id: str) -> MatrixUser:
        return await self._helper.matrix_user(user_id)

    async def matrix_avatar(self, user_id: str) -> Attachment | None:
        return await self._helper.matrix_avatar(user_id)

    async def portals(self, network: str) -> list[PortalKey]:
        return await self._helper.portals(network)

    async def portal_members(self, portal: PortalKey) -> list[MatrixUser]:
        return await self._helper.portal_members(portal)

    async def logins(self, network: str) -> list[Login]:
        return await self._helper.logins(network)

    def database(self) -> Any:
        return self._helper.database()

    def ghost_user_id(self, network: str, remote_id: str) -> str:
        return self._helper.ghost_user_id(network, remote_id)

    def mxc_to_url(self, mxc: str, filename: str = "") -> str:
        return self._helper.mxc_to_url(mxc, filename)

    async def upload_text(self, text: str, filename: str) -> str:
        return await self._helper.upload_text(text, filename)

    def public_url(self, path: str) -> str:
        return self._helper.public_url(path)

    def connection_changed(self, change: ConnectionChange) -> None:
        """The core keeps users' connection states and tells them: sent there in order, the
        connector not waiting (it calls this from protocol callbacks)."""
        self._changes.put_nowait(change)
        if self._changer is None or self._changer.done():
            self._changer = asyncio.get_running_loop().create_task(self._send_changes())

    async def _send_changes(self) -> None:
        while not self._changes.empty():
            change = self._changes.get_nowait()
            try:
                await self._requests.call_subject(
                    CORE_API,
                    {"method": "connection_changed", "args": [change]},
                    policy=Policy.BOUNDED,
                )
            except Exception as e:  # the user misses a notice; the state is sent again later
                self.log.info(
                    "connection change of %s not given to the core: %s", change.user_id, e
                )

    async def link_room(self, user_id: str, room_id: str, portal: PortalKey) -> None:
        """Matrix logic, and the core's portal records: the core does it."""
        await self._requests.call_subject(
            CORE_API,
            {"method": "link_room", "args": [user_id, room_id, portal]},
            policy=Policy.BOUNDED,
        )

    async def save_room_key(self, portal: PortalKey, key: str | None) -> None:
        """The core's portal records: the core keeps the key (it is the portal table's only
        writer). The other instances of a connector run split follow it at once."""
        await self._requests.publish(keys_subject(portal.network), {"portal": portal, "key": key})
        await self._requests.call_subject(
            CORE_API,
            {"method": "save_room_key", "args": [portal, key]},
            policy=Policy.BOUNDED,
        )
