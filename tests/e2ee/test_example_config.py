"""End-to-bridge encryption set up as the README tells an admin: config.example.yaml with
bridge.encryption.allow turned on (and the addresses), the registration from ``-g`` loaded by
a Synapse with the two experimental features, the bridge run as its own process. A real E2EE
client opens an encrypted DM with the bot and its commands are answered, encrypted."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.e2ee.helpers import BOT, command, encrypted_management_room, was_encrypted
from tests.e2ee.nio_user import NioUser
from tests.harness.example_config import AdminSetup, KeyPath


class EncryptedSetup(AdminSetup):
    def core_edits(self) -> dict[KeyPath, Any]:
        return {**super().core_edits(), ("bridge", "encryption", "allow"): True}


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[EncryptedSetup]:
    setup = EncryptedSetup(tmp_path)
    try:
        setup.write({})
        setup.start_synapse()
        yield setup
    finally:
        setup.close()


async def test_example_config_with_encryption(admin: EncryptedSetup, tmp_path: Path) -> None:
    reg = YAML().load(admin.registration)
    assert reg["org.matrix.msc3202"] is True and reg["io.element.msc4190"] is True
    assert reg["receive_ephemeral"] is True
    assert admin.synapse is not None
    await admin.start_bridge()
    alice = NioUser(admin.synapse, tmp_path / "nio")
    await alice.start()
    try:
        room = await encrypted_management_room(alice)
        await command(alice, room, "help", "login <network>")
        answer = await alice.wait_for_body(room, "login <network>", sender=BOT)
        assert await was_encrypted(alice, room, answer.event_id)
        for _ in range(300):
            if "the homeserver delivers to-device messages" in admin.log_text():
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"no word on the homeserver's support:\n{admin.log_tail()}")
        assert "encrypted rooms will not work" not in admin.log_text()
    finally:
        await alice.close()
    assert await admin.stop_bridge() == 0, admin.log_tail()
