"""The core's part of scale-out mode: connector proxies, and the remote event stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bridge.config import ScaleConfig
from bridge.connector import (
    ConnectionChange,
    ConnectorError,
    NetworkConnector,
    PortalKey,
    RemoteEvent,
)

from . import bus, codec
from .core_proxy import ConnectorProxy, proxy_for
from .event_consumer import EventConsumer
from .op_requests import OpRequests
from .subjects import CORE_API


class ScaleCore:
    def __init__(self, cfg: ScaleConfig, log: logging.Logger) -> None:
        assert cfg.nats_url is not None
        self.cfg = cfg
        self.log = log
        self.nc: Client | None = None
        # Proxies are made before the bus is connected (when connectors are loaded).
        self.requests = OpRequests(
            None,
            log.getChild("ops"),
            request_timeout_s=cfg.request_timeout_s,
            unowned_notice_s=cfg.unowned_notice_s,
        )
        self.consumer: EventConsumer | None = None
        self.api: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def connect(self) -> None:
        assert self.cfg.nats_url is not None
        self.nc = await bus.connect(
            self.cfg.nats_url, "mimi-core", self.log, on_reconnect=self._reconnected
        )
        await bus.ensure_events_stream(self.nc.jetstream())
        self.requests.nc = self.nc

    def _reconnected(self) -> None:
        if self.consumer is not None:
            self.consumer.resync()

    def proxy(self, local: NetworkConnector) -> ConnectorProxy:
        return proxy_for(local, self.requests)

    async def start_intake(
        self,
        submit: Callable[[RemoteEvent, Callable[[], Awaitable[None]]], None],
        link_room: Callable[[str, str, PortalKey], Awaitable[None]],
        save_room_key: Callable[[PortalKey, str | None], Awaitable[None]],
        connection_changed: Callable[[ConnectionChange], None],
    ) -> None:
        """Take remote events from the stream, and answer what workers ask of the core."""
        assert self.nc is not None
        self.consumer = EventConsumer(self.nc.jetstream(), submit, self.log.getChild("events"))
        await self.consumer.start()
        self._link_room = link_room
        self._save_room_key = save_room_key
        self._connection_changed = connection_changed
        self.api = await self.nc.subscribe(CORE_API, queue="mimi-core", cb=self._on_api)

    async def _on_api(self, msg: Msg) -> None:
        task = asyncio.create_task(self._answer_api(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_api(self, msg: Msg) -> None:
        try:
            request = codec.decode(msg.data)
            method = request.get("method") if isinstance(request, dict) else None
            if method == "link_room":
                user_id, room_id, portal = request["args"]
                await self._link_room(str(user_id), str(room_id), portal)
            elif method == "save_room_key":
                portal, key = request["args"]
                if not isinstance(portal, PortalKey) or not (key is None or isinstance(key, str)):
                    raise codec.CodecError("save_room_key takes a PortalKey and a key")
                await self._save_room_key(portal, key)
            elif method == "connection_changed":
                (change,) = request["args"]
                if not isinstance(change, ConnectionChange):
                    raise codec.CodecError("connection_changed takes a ConnectionChange")
                self._connection_changed(change)
            else:
                raise codec.CodecError("not a request the core answers")
            answer: dict[str, Any] = {"ok": None}
        except ConnectorError as e:
            answer = {"error": {"type": "ConnectorError", "message": str(e)}}
        except Exception as e:
            self.log.exception("a worker's request failed")
            answer = {"error": {"type": "internal", "message": f"{type(e).__name__} on the core"}}
        try:
            await msg.respond(codec.encode(answer))
        except Exception as e:
            self.log.info("answer to a worker lost: %s", e)

    async def stop_intake(self) -> None:
        if self.api is not None:
            try:
                await self.api.unsubscribe()
            except Exception as e:
                self.log.debug("unsubscribe: %s", e)
            self.api = None
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None

    async def close(self) -> None:
        nc, self.nc = self.nc, None
        if nc is not None:
            try:
                await nc.drain()  # acks still buffered go out first
            except Exception:
                await nc.close()
