"""Fixtures for the webhooks connector: a bridge with it, a room bridged to a webhooks
channel, and a small loopback HTTP server the tests own (icons, outgoing receivers)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge.bridge import Bridge
from tests.conftest import BridgeFactory
from tests.harness.ports import free_port
from tests.harness.synapse import MatrixClient, SynapseServer
from tests.helpers import new_user, until

BOT = "@mimibot:localhost"
URL = re.compile(r"(http://\S+/_mimi/webhooks/[A-Za-z0-9_-]+)")


def body(evt: dict[str, Any]) -> str:
    return str(evt.get("content", {}).get("body", ""))


@dataclass
class HookRoom:
    bridge: Bridge
    admin: MatrixClient
    room: str
    channel: str

    async def command(self, text: str, expect: str) -> str:
        await self.admin.send_text(self.room, f"!mimi {text}")
        evt = await self.admin.wait_for_event(
            self.room, lambda e: e["sender"] == BOT and expect in body(e)
        )
        return body(evt)

    async def create_hook(self, name: str) -> str:
        reply = await self.command(f"webhook create {name}", f"Created the webhook '{name}'")
        m = URL.search(reply)
        assert m, reply
        return m.group(1)


async def hook_room(
    make_bridge: BridgeFactory, synapse: SynapseServer, channel: str, **cfg: Any
) -> HookRoom:
    bridge = await make_bridge(connectors={"webhooks": cfg})
    ivy = new_user(synapse)
    room = await ivy.create_room(invite=[BOT], power_level_content_override={"users": {BOT: 100}})
    await until(lambda: bridge.hs.is_joined(room, BOT), what="bot joined")
    hr = HookRoom(bridge, ivy, room, channel)
    await hr.command(f"link webhooks {channel}", "Linked")
    return hr


@pytest.fixture
def hook_room_factory(
    make_bridge: BridgeFactory, synapse: SynapseServer
) -> Callable[..., Awaitable[HookRoom]]:
    async def factory(channel: str = "alerts", **cfg: Any) -> HookRoom:
        return await hook_room(make_bridge, synapse, channel, **cfg)

    return factory


@dataclass
class LocalHttp:
    """Records what it receives; ``fail`` answers 500 that many times first."""

    port: int
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    fail: int = 0
    icon: bytes = b""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def local_http() -> AsyncIterator[LocalHttp]:
    state = LocalHttp(free_port())

    async def receive(request: web.Request) -> web.Response:
        data = await request.read()
        if state.fail > 0:
            state.fail -= 1
            return web.Response(status=500, text="not now")
        state.received.append(({k.lower(): v for k, v in request.headers.items()}, data))
        return web.json_response({})

    async def icon(request: web.Request) -> web.Response:
        return web.Response(body=state.icon, content_type="image/png")

    app = web.Application()
    app.router.add_post("/in", receive)
    app.router.add_get("/icon.png", icon)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", state.port).start()
    yield state
    await runner.cleanup()


async def post(
    url: str, payload: Any = None, *, data: bytes | None = None, content_type: str = ""
) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        kwargs: dict[str, Any] = {"json": payload} if data is None else {"data": data}
        if content_type:
            kwargs["headers"] = {"Content-Type": content_type}
        async with s.post(url, **kwargs) as resp:
            try:
                answer = await resp.json(content_type=None)
            except ValueError:
                answer = await resp.text()
            return resp.status, answer
