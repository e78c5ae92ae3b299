"""Fixtures for the Delta Chat connector: a loopback postfix + dovecot stack (one per session),
two real Delta Chat profiles (alice and bob, in their own core) as the remote users, and a
bridge with a fresh Delta Chat account per test."""

from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
import struct
import tempfile
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.bridge import Bridge
from connectors.deltachat.rpc import Rpc
from tests.conftest import BridgeFactory
from tests.harness.mailstack import MailStack, start_mailstack

_n = itertools.count(1)
Event = dict[str, Any]


class Peers:
    """Delta Chat profiles driven through their own core, with their events recorded."""

    def __init__(self, stack: MailStack, workdir: Path) -> None:
        self.stack = stack
        self.rpc = Rpc(workdir / "accounts", self._on_event, logging.getLogger("peers"))
        self.events: dict[int, list[Event]] = {}
        self.accounts: dict[str, int] = {}

    async def _on_event(self, account: int, event: Event) -> None:
        self.events.setdefault(account, []).append(event)

    async def add(self, local: str, name: str) -> Peer:
        addr = self.stack.add_user(local, f"{local}-pw")
        acc = int(await self.rpc.call("add_account"))
        await self.rpc.call("set_config", acc, "displayname", name)
        await self.rpc.call("add_or_update_transport", acc, self.stack.transport(addr))
        await self.rpc.call("start_io", acc)
        self.accounts[addr] = acc
        return Peer(self, acc, addr, name)


class Peer:
    def __init__(self, peers: Peers, account: int, addr: str, name: str) -> None:
        self.peers, self.acc, self.addr, self.name = peers, account, addr, name

    async def call(self, method: str, *params: Any) -> Any:
        return await self.peers.rpc.call(method, self.acc, *params)

    def mark(self) -> int:
        """A position in the event log; wait_* only looks at events after it."""
        return len(self.peers.events.get(self.acc, []))

    async def wait_event(
        self, pred: Callable[[Event], bool], since: int = 0, limit_s: float = 30.0
    ) -> Event:
        loop = asyncio.get_running_loop()
        end = loop.time() + limit_s
        while True:
            for ev in self.peers.events.get(self.acc, [])[since:]:
                if pred(ev):
                    return ev
            if loop.time() > end:
                raise AssertionError(f"{self.addr}: no matching Delta Chat event")
            await asyncio.sleep(0.05)

    async def wait_message(
        self, pred: Callable[[Event], bool], since: int = 0, limit_s: float = 30.0
    ) -> Event:
        """The next incoming message (``get_message`` snapshot) matching ``pred``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + limit_s
        seen: set[int] = set()
        while True:
            for ev in self.peers.events.get(self.acc, [])[since:]:
                if ev["kind"] != "IncomingMsg" or ev["msgId"] in seen:
                    continue
                seen.add(ev["msgId"])
                msg = await self.call("get_message", ev["msgId"])
                if pred(msg):
                    return dict(msg)
            if loop.time() > end:
                raise AssertionError(f"{self.addr}: no matching Delta Chat message")
            await asyncio.sleep(0.05)

    async def messages(self, chat_id: int) -> list[Event]:
        ids = await self.call("get_message_ids", chat_id, False, False)
        return [dict(await self.call("get_message", i)) for i in ids]

    async def join(self, link: str) -> int:
        """Secure-join a contact or group invite link; the chat id once done."""
        since = self.mark()
        chat = int(await self.call("secure_join", link))
        await self.wait_event(
            lambda e: e["kind"] == "SecurejoinJoinerProgress" and e["progress"] == 1000, since
        )
        return chat

    async def send(self, chat_id: int, text: str, **extra: Any) -> int:
        return int(await self.call("send_msg", chat_id, {"text": text, **extra}))

    async def mid(self, msg_id: int) -> str:
        return str((await self.call("get_message_info_object", msg_id))["rfc724Mid"])


@pytest.fixture(scope="session")
def mailstack() -> Iterator[MailStack]:
    stack = start_mailstack()
    yield stack
    stack.stop(remove=True)


@pytest.fixture(scope="session")
async def peers(mailstack: MailStack) -> AsyncIterator[Peers]:
    workdir = Path(tempfile.mkdtemp(prefix="mimi-dc-peers-"))
    p = Peers(mailstack, workdir)
    await p.rpc.start()
    yield p
    await p.rpc.close()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
async def alice(peers: Peers) -> Peer:
    return await peers.add(f"alice{next(_n)}", "Alice")


@pytest.fixture
async def bob(peers: Peers) -> Peer:
    return await peers.add(f"bob{next(_n)}", "Bob")


def dc_config(
    stack: MailStack, workdir: Path, address: str, password: str, **extra: Any
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "accounts_dir": str(workdir / "deltachat"),
        "account": {"address": address, "password": password, "display_name": "Bridge"},
        "imap": {"host": stack.host, "port": stack.imap_port, "security": "plain"},
        "smtp": {"host": stack.host, "port": stack.smtp_port, "security": "plain"},
        "policy": {"allowed_senders": ["*@example.test"]},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


class DCBridge:
    """Starts (and restarts) a bridge whose Delta Chat account is fresh for the test."""

    def __init__(self, make_bridge: BridgeFactory, stack: MailStack, workdir: Path) -> None:
        self.make_bridge = make_bridge
        self.stack = stack
        self.workdir = workdir
        local = f"bridge{next(_n)}"
        self.address = stack.add_user(local, f"{local}-pw")
        self.password = f"{local}-pw"
        self.bridge: Bridge | None = None

    async def start(self, bridge: dict[str, Any] | None = None, **extra: Any) -> Bridge:
        """``extra`` goes to the connector's config, ``bridge`` to the bridge section."""
        cfg = dc_config(self.stack, self.workdir, self.address, self.password, **extra)
        self.bridge = await self.make_bridge(connectors={"deltachat": cfg}, **(bridge or {}))
        return self.bridge

    @property
    def connector(self) -> Any:
        assert self.bridge is not None
        return self.bridge.connectors["deltachat"]


@pytest.fixture
def dcbridge(make_bridge: BridgeFactory, mailstack: MailStack, tmp_path: Path) -> DCBridge:
    return DCBridge(make_bridge, mailstack, tmp_path)


def png(width: int = 8, height: int = 8, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A small valid PNG image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
