"""Fixtures for the IRC connector tests: a real ngircd on loopback, a fake BridgeAPI that
records what the connector emits, and a plain asyncio IRC client playing "IRC users"."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.connector import (
    ConnectionChange,
    Login,
    MatrixUser,
    PortalKey,
    RemoteEvent,
    escape_localpart,
)
from connectors.irc.protocol import Line, parse_line
from tests.harness.ircd import IrcServer, start_ngircd
from tests.harness.synapse import MatrixClient, SynapseServer

DOMAIN = "example.org"


class FakeBridge:
    """Records events and notifications; answers the core's questions from plain attributes."""

    def __init__(self) -> None:
        self.domain = DOMAIN
        self.log = logging.getLogger("test.bridge")
        self.events: list[RemoteEvent] = []
        self.notices: list[tuple[str, str, PortalKey | None]] = []
        self.uploads: list[tuple[str, str]] = []
        self.users: dict[str, MatrixUser] = {}
        self.portal_list: list[PortalKey] = []
        self.members: dict[PortalKey, list[MatrixUser]] = {}
        self.login_list: list[Login] = []
        self.upload_fails = False
        self.connection_changes: list[ConnectionChange] = []
        self.room_keys: dict[PortalKey, str | None] = {}

    async def emit(self, event: RemoteEvent) -> None:
        self.events.append(event)

    async def notify(self, user_id: str, text: str, portal: PortalKey | None = None) -> None:
        self.notices.append((user_id, text, portal))

    def connection_changed(self, change: ConnectionChange) -> None:
        self.connection_changes.append(change)

    async def matrix_user(self, user_id: str) -> MatrixUser:
        return self.users.get(user_id) or MatrixUser(user_id, user_id[1:].split(":")[0], "user")

    async def portals(self, network: str) -> list[PortalKey]:
        return [p for p in self.portal_list if p.network == network]

    async def portal_members(self, portal: PortalKey) -> list[MatrixUser]:
        return self.members.get(portal, [])

    async def logins(self, network: str) -> list[Login]:
        return [lg for lg in self.login_list if lg.network == network]

    def database(self) -> Any:
        raise RuntimeError("no database in these tests")

    def ghost_user_id(self, network: str, remote_id: str) -> str:
        return f"@{network}_{escape_localpart(remote_id)}:{DOMAIN}"

    def mxc_to_url(self, mxc: str) -> str:
        return "https://example.org/media/" + mxc.removeprefix("mxc://")

    async def upload_text(self, text: str, filename: str) -> str:
        if self.upload_fails:
            raise RuntimeError("upload failed")
        self.uploads.append((text, filename))
        return f"https://example.org/paste/{len(self.uploads)}"

    async def save_room_key(self, portal: PortalKey, key: str | None) -> None:
        self.room_keys[portal] = key

    def of_type(self, cls: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]


async def wait_for(pred: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.02)


class RawIRC:
    """A minimal IRC user on asyncio streams (not the connector's client)."""

    def __init__(self, host: str, port: int, nick: str) -> None:
        self.host, self.port, self.nick = host, port, nick
        self.lines: list[Line] = []
        self.raw: list[tuple[float, bytes]] = []
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def connect(self) -> RawIRC:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self._task = asyncio.get_running_loop().create_task(self._read())
        self.send(f"NICK {self.nick}", f"USER {self.nick} 0 * :{self.nick}")
        await self.expect(lambda ln: ln.command == "001", what="001")
        return self

    async def _read(self) -> None:
        assert self.reader is not None
        while True:
            raw = await self.reader.readline()
            if not raw:
                return
            self.raw.append((time.monotonic(), raw))
            line = parse_line(raw)
            if line is None:
                continue
            if line.command == "PING":
                self.send(f"PONG :{line.param(0)}")
            self.lines.append(line)

    def send(self, *lines: str) -> None:
        assert self.writer is not None
        for line in lines:
            self.writer.write(line.encode() + b"\r\n")

    async def expect(
        self,
        pred: Callable[[Line], bool],
        timeout: float = 10.0,  # noqa: ASYNC109
        what: str = "",
    ) -> Line:
        def find() -> Line | None:
            return next((ln for ln in self.lines if pred(ln)), None)

        result: Line = await wait_for(find, timeout, what)
        return result

    def messages(self, channel: str | None = None) -> list[Line]:
        return [
            ln
            for ln in self.lines
            if ln.command in ("PRIVMSG", "NOTICE")
            and (channel is None or ln.param(0).lower() == channel.lower())
        ]

    async def join(self, channel: str) -> None:
        self.send(f"JOIN {channel}")
        await self.expect(
            lambda ln: ln.command == "366" and ln.param(1).lower() == channel.lower(),
            what=f"join {channel}",
        )

    async def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.write(b"QUIT :bye\r\n")
                self.writer.close()
            except Exception:
                pass
        if self._task is not None:
            self._task.cancel()


@pytest.fixture(scope="session")
def ngircd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IrcServer]:
    server = start_ngircd(Path(tmp_path_factory.mktemp("ngircd")))
    yield server
    server.stop()


@pytest.fixture
def bridge() -> FakeBridge:
    return FakeBridge()


@pytest.fixture
async def irc_users(ngircd: IrcServer) -> AsyncIterator[Callable[..., Any]]:
    made: list[RawIRC] = []

    async def make(nick: str) -> RawIRC:
        client = await RawIRC(ngircd.host, ngircd.port, nick).connect()
        made.append(client)
        return client

    yield make
    for c in made:
        await c.close()


# --- Matrix users and IRC users of the end-to-end tests through Synapse --------------------

_n = itertools.count(1)


def uniq(prefix: str) -> str:
    return f"{prefix}{next(_n)}"


async def matrix_user(synapse: SynapseServer, name: str) -> MatrixClient:
    """A Matrix user whose display name is ``name`` (so its puppet's nick is ``name[m]``)."""
    client = synapse.new_client(name.lower())
    await client.set_displayname(name)
    return client


class IrcUsers:
    """IRC users on a server, closed at the end of the test."""

    def __init__(self) -> None:
        self.made: list[RawIRC] = []

    async def __call__(self, server: IrcServer, prefix: str) -> RawIRC:
        client = await RawIRC(server.host, server.port, uniq(prefix)).connect()
        self.made.append(client)
        return client

    async def close(self) -> None:
        for c in self.made:
            await c.close()


@pytest.fixture
async def irc() -> AsyncIterator[IrcUsers]:
    users = IrcUsers()
    yield users
    await users.close()


@pytest.fixture
async def matrix(synapse: SynapseServer) -> AsyncIterator[Callable[..., Any]]:
    made: list[MatrixClient] = []

    async def make(prefix: str) -> MatrixClient:
        client = await matrix_user(synapse, uniq(prefix))
        made.append(client)
        return client

    yield make
    for c in made:
        await c.close()
