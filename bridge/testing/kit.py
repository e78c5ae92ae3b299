"""The kit's running parts: a Synapse for one test module (:class:`KitEnv`) and, per test, a
bridge with the connector under test and a Matrix user (:class:`Kit`)."""

from __future__ import annotations

import asyncio
import itertools
import json
import struct
import uuid
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from ruamel.yaml import YAML

from bridge.bridge import Bridge
from bridge.config import load as load_config
from bridge.connector import PortalKey

from .driver import Driver
from .ports import free_port
from .synapse import MatrixClient, SynapseServer, start_synapse

AS_TOKEN = "kit-as-token-0123456789"
HS_TOKEN = "kit-hs-token-0123456789"
BOT = "mimibot"
Event = dict[str, Any]


class ContractError(AssertionError):
    """A scenario failed: what the connector did, and what the contract expected."""

    def __init__(self, did: str, expected: str) -> None:
        super().__init__(f"the connector {did}; the contract expects {expected}")


# How long a scenario waits for what the contract expects: long enough for a loaded machine
# and a slow network (mail), short enough to fail a broken connector in reasonable time.
LIMIT_S = 40.0


def body(evt: Event) -> str:
    return str(evt.get("content", {}).get("body", ""))


def write_registration(path: Path, as_port: int, driver: Driver) -> Path:
    reg = {
        "id": "mimi-bridge",
        "url": f"http://127.0.0.1:{as_port}",
        "as_token": AS_TOKEN,
        "hs_token": HS_TOKEN,
        "sender_localpart": BOT,
        "rate_limited": False,
        "receive_ephemeral": True,
        "protocols": [driver.connector],
        "namespaces": {
            "users": [
                {"exclusive": True, "regex": f"@{BOT}:localhost"},
                {"exclusive": True, "regex": f"@{driver.prefix}.*:localhost"},
            ],
            "aliases": [{"exclusive": True, "regex": f"#{driver.prefix}.*:localhost"}],
            "rooms": [],
        },
    }
    with path.open("w") as f:
        YAML().dump(reg, f)
    return path


@dataclass
class KitEnv:
    synapse: SynapseServer
    as_port: int
    users: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def start(cls, workdir: Path, driver: Driver) -> KitEnv:
        as_port = free_port()
        reg = write_registration(workdir / "registration.yaml", as_port, driver)
        return cls(start_synapse(workdir / "synapse", [reg]), as_port)


class Kit:
    """One scenario's bridge and Matrix user. ``user`` is a bridge admin, so also an admin of
    every room it is in."""

    def __init__(self, env: KitEnv, driver: Driver, workdir: Path) -> None:
        self.env = env
        self.synapse = env.synapse
        self.driver = driver
        self.workdir = workdir
        self.bridge: Bridge | None = None
        self.user: MatrixClient = env.synapse.new_client(f"kit{next(env.users)}")
        # A second user with only the "relay" permission, registered when a scenario asks.
        self._relay_localpart = f"kitrelay{next(env.users)}"
        self._relay_user: MatrixClient | None = None
        self._members = itertools.count(1)
        self._others: list[MatrixClient] = []
        self._configs = itertools.count()
        # A room of its own: a portal of an earlier scenario's bridge keeps its alias.
        self.room = driver.room_for(uuid.uuid4().hex[:10])

    # --- the bridge ---------------------------------------------------------------------

    def _write_config(self) -> Path:
        cfg = {
            "homeserver": {"address": self.synapse.url, "domain": "localhost"},
            "appservice": {
                "address": f"http://127.0.0.1:{self.env.as_port}",
                "hostname": "127.0.0.1",
                "port": self.env.as_port,
                "id": "mimi-bridge",
                "bot_username": BOT,
                "as_token": AS_TOKEN,
                "hs_token": HS_TOKEN,
                "database": f"sqlite://{self.workdir / 'bridge.db'}",
            },
            "bridge": {
                "permissions": {
                    "*": "relay",
                    "localhost": "admin",
                    f"@{self._relay_localpart}:localhost": "relay",
                },
                "credentials_key": "kit-credentials-key",
            },
            "logging": {"level": "DEBUG"},
            "connectors": {self.driver.connector: dict(self.driver.config(self.workdir))},
        }
        path = self.workdir / f"config-{next(self._configs)}.yaml"
        with path.open("w") as f:
            YAML().dump(cfg, f)
        return path

    async def start_bridge(self) -> Bridge:
        self.bridge = Bridge(load_config(self._write_config()))
        await self.bridge.start()
        return self.bridge

    async def stop_bridge(self) -> None:
        if self.bridge is not None:
            await self.bridge.stop()
            self.bridge = None

    async def restart_bridge(self) -> Bridge:
        await self.stop_bridge()
        return await self.start_bridge()

    def running(self) -> Bridge:
        assert self.bridge is not None, "the kit's bridge is not running"
        return self.bridge

    async def relay_user(self) -> MatrixClient:
        """A Matrix user the bridge only relays (permission "relay")."""
        if self._relay_user is None:
            self._relay_user = await asyncio.to_thread(
                self.synapse.new_client, self._relay_localpart
            )
        return self._relay_user

    async def other_user(self) -> MatrixClient:
        """A further Matrix user of the bridge's server (so a bridge admin), new each call."""
        localpart = f"{self.user.user_id[1:].split(':')[0]}m{next(self._members)}"
        client = await asyncio.to_thread(self.synapse.new_client, localpart)
        self._others.append(client)
        return client

    # --- rooms --------------------------------------------------------------------------

    def alias(self) -> str:
        return self.running().alias_of(PortalKey(self.driver.network, self.room))

    async def open_portal(self) -> str:
        """Join the portal of the driver's room by its alias; the driver is told."""
        await self.driver.prepare_room(self)
        room_id = await self.user.join(self.alias())
        await self.driver.portal_ready(self, room_id)
        return room_id

    async def management_room(self) -> str:
        bot = f"@{BOT}:localhost"
        room = await self.user.create_room(invite=[bot], is_direct=True)
        await self.wait_event(
            room, lambda e: "management room" in body(e), "the bot's welcome in a management room"
        )
        return room

    async def command(self, room: str, text: str, expect: str) -> str:
        await self.user.send_text(room, text)
        evt = await self.wait_event(
            room,
            lambda e: e["sender"] == f"@{BOT}:localhost" and expect in body(e),
            f"the bot's answer to {text!r} containing {expect!r}",
        )
        return body(evt)

    # --- waiting, with what happened in the error -----------------------------------------

    async def wait_event(
        self, room: str, pred: Callable[[Event], bool], expected: str, limit_s: float = LIMIT_S
    ) -> Event:
        try:
            return await self.user.wait_for_event(room, pred, timeout=limit_s)
        except TimeoutError as e:
            raise ContractError(
                f"put no such event in the room ({e})", f"{expected} within {limit_s:.0f} s"
            ) from None

    async def wait_received(
        self, kind: str, expected: str, limit_s: float = LIMIT_S, **match: Any
    ) -> dict[str, Any]:
        """The first thing the network received of ``kind`` whose fields match (``text`` is
        matched as a substring: relayed messages carry the sender's name; a callable is a test
        of the field)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + limit_s
        while True:
            for entry in self.driver.received(self):
                if entry.get("kind") == kind and _matches(entry, match):
                    return entry
            if loop.time() >= end:
                got = json.dumps(self.driver.received(self)[-8:], default=str)
                raise ContractError(
                    f"delivered only this to the network (last 8): {got}",
                    f"{expected} within {limit_s:.0f} s",
                )
            await asyncio.sleep(0.1)

    async def until_true(
        self, pred: Callable[[], bool], expected: str, limit_s: float = LIMIT_S
    ) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + limit_s
        while not pred():
            if loop.time() >= end:
                raise ContractError("did not get there", f"{expected} within {limit_s:.0f} s")
            await asyncio.sleep(0.1)

    async def ephemeral(self, room: str) -> list[Event]:
        """The room's ephemeral events (typing, receipts) as the kit's user sees them now: a
        fresh initial /sync, its filter made unique because Synapse caches identical ones."""
        fresh = json.dumps({"room": {"not_rooms": [f"!kit{uuid.uuid4().hex}:localhost"]}})
        _, sync = await self.user.request(
            "GET", "/_matrix/client/v3/sync", params={"timeout": "0", "filter": fresh}
        )
        joined = sync.get("rooms", {}).get("join", {}).get(room, {})
        return list(joined.get("ephemeral", {}).get("events", []))

    async def typing_users(self, room: str) -> set[str]:
        for e in await self.ephemeral(room):
            if e["type"] == "m.typing":
                return set(e["content"].get("user_ids", []))
        return set()

    async def read_by(self, room: str, event_id: str) -> set[str]:
        for e in await self.ephemeral(room):
            if e["type"] == "m.receipt" and event_id in e["content"]:
                return set(e["content"][event_id].get("m.read", {}))
        return set()

    async def until_async(
        self,
        pred: Callable[[], Awaitable[bool]],
        did: Callable[[], str],
        expected: str,
        limit_s: float = LIMIT_S,
    ) -> None:
        """Like :meth:`until_true` for a check that has to ask the homeserver; ``did`` says
        what was seen last, for the error."""
        loop = asyncio.get_running_loop()
        end = loop.time() + limit_s
        while not await pred():
            if loop.time() >= end:
                raise ContractError(did(), f"{expected} within {limit_s:.0f} s")
            await asyncio.sleep(0.2)

    def count_received(self, kind: str, **match: Any) -> int:
        return sum(
            1 for e in self.driver.received(self) if e.get("kind") == kind and _matches(e, match)
        )

    async def settle(self) -> None:
        """Let queued work finish (remote deliveries and Matrix sends)."""
        await self.running().queues.drain()
        await asyncio.sleep(0.5)

    # --- media ---------------------------------------------------------------------------

    async def upload(self, data: bytes, mimetype: str, filename: str) -> str:
        """Upload as the kit's user; the mxc URI."""
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"{self.synapse.url}/_matrix/media/v3/upload",
                params={"filename": filename},
                data=data,
                headers={"Authorization": f"Bearer {self.user.token}", "Content-Type": mimetype},
            ) as resp,
        ):
            return str((await resp.json())["content_uri"])

    async def download(self, mxc: str) -> bytes:
        """Fetch an mxc URI with authenticated media, as the kit's user."""
        server, media_id = mxc.removeprefix("mxc://").split("/", 1)
        url = f"{self.synapse.url}/_matrix/client/v1/media/download/{server}/{media_id}"
        async with (
            aiohttp.ClientSession() as s,
            s.get(url, headers={"Authorization": f"Bearer {self.user.token}"}) as resp,
        ):
            if resp.status != 200:
                raise ContractError(f"posted {mxc}, which downloads with {resp.status}", "200")
            return await resp.read()

    # --- straight to the appservice API, as a homeserver would ------------------------------

    async def put_transaction(self, txn_id: str, events: list[Event]) -> int:
        url = f"http://127.0.0.1:{self.env.as_port}/_matrix/app/v1/transactions/{txn_id}"
        headers = {"Authorization": f"Bearer {HS_TOKEN}"}
        async with (
            aiohttp.ClientSession() as s,
            s.put(url, json={"events": events}, headers=headers) as resp,
        ):
            return resp.status

    def fake_event(self, room_id: str, content: dict[str, Any]) -> Event:
        return {
            "type": "m.room.message",
            "room_id": room_id,
            "sender": self.user.user_id,
            "event_id": f"$kit-{uuid.uuid4().hex}",
            "origin_server_ts": 1_700_000_000_000,
            "content": content,
        }

    async def close(self) -> None:
        await self.stop_bridge()
        await self.user.close()
        if self._relay_user is not None:
            await self._relay_user.close()
        for other in self._others:
            await other.close()


def png(width: int = 16, height: int = 16, rgb: tuple[int, int, int] = (30, 120, 200)) -> bytes:
    """A small valid PNG image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        tagged = kind + data
        return struct.pack(">I", len(data)) + tagged + struct.pack(">I", zlib.crc32(tagged))

    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _matches(entry: dict[str, Any], match: dict[str, Any]) -> bool:
    for key, want in match.items():
        got = entry.get(key)
        if callable(want):
            if not want(got):
                return False
        elif key == "text":
            if not (isinstance(got, str) and want in got):
                return False
        elif got != want:
            return False
    return True
