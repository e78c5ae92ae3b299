"""The core's part of scale-out mode: connector proxies, and the remote event stream."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client

from bridge.config import ScaleConfig
from bridge.connector import NetworkConnector, RemoteEvent

from . import bus
from .core_proxy import ConnectorProxy, proxy_for
from .event_consumer import EventConsumer
from .op_requests import OpRequests


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

    async def connect(self) -> None:
        assert self.cfg.nats_url is not None
        self.nc = await bus.connect(self.cfg.nats_url, "mimi-core", self.log)
        await bus.ensure_events_stream(self.nc.jetstream())
        self.requests.nc = self.nc

    def proxy(self, local: NetworkConnector) -> ConnectorProxy:
        return proxy_for(local, self.requests)

    async def start_intake(
        self, submit: Callable[[RemoteEvent, Callable[[], Awaitable[None]]], None]
    ) -> None:
        assert self.nc is not None
        self.consumer = EventConsumer(self.nc.jetstream(), submit, self.log.getChild("events"))
        await self.consumer.start()

    async def stop_intake(self) -> None:
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
