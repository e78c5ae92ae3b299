"""The connector kit's standard scenarios against the webhooks connector: remote messages are
POSTs to a hook, what the network receives is what the hook's outgoing URL gets."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge.testing import ConnectorScenarios, Kit
from bridge.testing.ports import free_port

URL = re.compile(r"(http://\S+/_mimi/webhooks/[A-Za-z0-9_-]+)")


class WebhooksDriver:
    connector = "webhooks"
    network = "webhooks"
    prefix = "webhook_"
    capabilities = frozenset({"formatting", "remote_formatting", "remote_large_messages"})

    def __init__(self) -> None:
        self.hook_url = ""
        self.got: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    def room_for(self, tag: str) -> str:
        return f"kit-{tag}"

    def config(self, workdir: Path) -> Mapping[str, Any]:
        return {"outgoing_backoff_seconds": 0.1, "outgoing_retries": 1}

    async def start(self, kit: Kit) -> None:
        self.hook_url, self.got = "", []
        self.port = free_port()

        async def receive(request: web.Request) -> web.Response:
            payload = json.loads(await request.read())
            self.got.append(
                {
                    "kind": "message",
                    "text": payload.get("text"),
                    "html": payload.get("html"),
                    "id": f"matrix-{payload.get('event_id')}",
                    "relayed": False,
                }
            )
            return web.json_response({})

        app = web.Application()
        app.router.add_post("/in", receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def prepare_room(self, kit: Kit) -> None:
        pass

    async def portal_ready(self, kit: Kit, room_id: str) -> None:
        reply = await kit.command(room_id, "!mimi webhook create kit", "Created the webhook")
        m = URL.search(reply)
        assert m, reply
        self.hook_url = m.group(1)
        await kit.command(
            room_id, f"!mimi webhook outgoing kit http://127.0.0.1:{self.port}/in", "now posts"
        )

    async def remote_message(
        self, kit: Kit, text: str, html: str | None = None, reply_to: str | None = None
    ) -> str | None:
        payload = {"text": text, "html": html} if html else {"text": text}
        async with aiohttp.ClientSession() as s, s.post(self.hook_url, json=payload) as resp:
            answer = await resp.json()
            assert resp.status == 200, answer
            return str(answer["id"])

    async def remote_edit(self, kit: Kit, target: str, text: str) -> None:
        raise NotImplementedError("webhooks send no edits (Alertmanager groups aside)")

    async def remote_reaction(self, kit: Kit, target: str, key: str) -> None:
        raise NotImplementedError

    async def remote_redaction(self, kit: Kit, target: str) -> None:
        raise NotImplementedError

    async def remote_image(self, kit: Kit, data: bytes, filename: str) -> str | None:
        raise NotImplementedError("not declared: remote_media")

    def received(self, kit: Kit) -> list[dict[str, Any]]:
        return list(self.got)


@pytest.fixture(scope="module")
def mimi_driver() -> WebhooksDriver:
    return WebhooksDriver()


class TestWebhooks(ConnectorScenarios, driver=WebhooksDriver):
    pass
