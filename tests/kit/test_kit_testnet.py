"""The connector kit's standard scenarios against the test plugin connector, which declares
every capability."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from bridge.connector import Attachment, PortalKey
from bridge.testing import ConnectorScenarios, Kit


class TestNetDriver:
    connector = "testnet"
    network = "testnet"
    prefix = "testnet_"
    capabilities = frozenset(
        {
            "formatting",
            "replies",
            "edits",
            "reactions",
            "redactions",
            "remote_formatting",
            "remote_replies",
            "remote_edits",
            "remote_reactions",
            "remote_redactions",
            "relay",
            "remote_large_messages",
            "media",
            "remote_media",
            "typing",
            "receipts",
            "remote_typing",
            "remote_receipts",
        }
    )

    def room_for(self, tag: str) -> str:
        return f"#kit-{tag}"

    def config(self, workdir: Path) -> Mapping[str, Any]:
        return {}

    async def start(self, kit: Kit) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def prepare_room(self, kit: Kit) -> None:
        pass

    async def portal_ready(self, kit: Kit, room_id: str) -> None:
        pass

    def _tn(self, kit: Kit) -> Any:
        return kit.running().connectors["testnet"]

    async def remote_message(
        self, kit: Kit, text: str, html: str | None = None, reply_to: str | None = None
    ) -> str | None:
        return str(
            await self._tn(kit).remote_message(kit.room, "remy", text, html=html, reply_to=reply_to)
        )

    async def remote_edit(self, kit: Kit, target: str, text: str) -> None:
        await self._tn(kit).remote_edit(kit.room, "remy", target, text)

    async def remote_reaction(self, kit: Kit, target: str, key: str) -> None:
        await self._tn(kit).remote_reaction(kit.room, "remy", target, key)

    async def remote_redaction(self, kit: Kit, target: str) -> None:
        await self._tn(kit).remote_redaction(kit.room, "remy", target)

    async def own_identity(self, kit: Kit) -> None:
        # Typing and receipts are never relayed: the kit's user logs in as "kitty".
        await kit.command(await kit.management_room(), "login testnet kitty", "kitty")

    async def remote_typing(self, kit: Kit, typing: bool) -> None:
        await self._tn(kit).remote_typing(kit.room, "remy", typing)

    async def remote_receipt(self, kit: Kit, target: str) -> None:
        await self._tn(kit).remote_receipt(kit.room, "remy", target)

    async def remote_image(self, kit: Kit, data: bytes, filename: str) -> str | None:
        image = Attachment(filename, "image/png", data=data, size=len(data))
        return str(await self._tn(kit).remote_message(kit.room, "remy", "", attachments=[image]))

    def received(self, kit: Kit) -> list[dict[str, Any]]:
        if kit.bridge is None:
            return []
        key = PortalKey(self.network, kit.room)
        return [
            {**e, "file": e["files"][0][0]} if e.get("files") else e
            for e in self._tn(kit).sent
            if e.get("room") == key.remote_id
        ]


@pytest.fixture(scope="module")
def mimi_driver() -> TestNetDriver:
    return TestNetDriver()


class TestTestNet(ConnectorScenarios, driver=TestNetDriver):
    pass
