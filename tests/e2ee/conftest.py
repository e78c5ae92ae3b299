"""Fixtures for the encryption tests: users with a real E2EE client (matrix-nio[e2e]), on the
session's Synapse (its appservice encryption extensions are on)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.e2ee.nio_user import NioUser
from tests.harness.synapse import SynapseServer

NioFactory = Callable[..., Awaitable[NioUser]]


@pytest.fixture
async def nio_user(synapse: SynapseServer, tmp_path: Path) -> AsyncIterator[NioFactory]:
    users: list[NioUser] = []

    async def factory(device_of: NioUser | None = None) -> NioUser:
        """A new user with an E2EE client, or a new device of ``device_of``."""
        user = NioUser(synapse, tmp_path / f"nio-{len(users)}", device_of=device_of)
        users.append(user)
        await user.start()
        return user

    yield factory
    for user in users:
        await user.close()
