"""A Matrix user with a real end-to-end-encrypting client (matrix-nio with its e2e extra) for
the encryption tests: it syncs in the background, decrypts what it receives and encrypts
what it sends, as Element would."""

from __future__ import annotations

import asyncio
import io
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from nio import (
    AsyncClient,
    AsyncClientConfig,
    Event,
    LoginResponse,
    MegolmEvent,
    RoomCreateResponse,
    RoomSendResponse,
    UploadResponse,
)

from tests.harness.synapse import MatrixClient, SynapseServer

_users = itertools.count(1)
MEGOLM = {"algorithm": "m.megolm.v1.aes-sha2"}


class NioUser:
    def __init__(
        self,
        synapse: SynapseServer,
        store: Path,
        prefix: str = "crypt",
        device_of: NioUser | None = None,
    ) -> None:
        """A new user, or with ``device_of`` a new device (client) of that user."""
        if device_of is not None:
            self.localpart, self.password = device_of.localpart, device_of.password
            self.user_id = device_of.user_id
        else:
            self.localpart = f"{prefix}{next(_users)}"
            self.password = f"{self.localpart}-password"
            self.user_id = synapse.register_user(self.localpart, self.password)
        self.synapse = synapse
        store.mkdir(parents=True, exist_ok=True)
        self.client = AsyncClient(
            synapse.url,
            self.user_id,
            store_path=str(store),
            config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False),
        )
        # (room id, event) in arrival order, decrypted where nio could.
        self.events: list[tuple[str, Event]] = []
        self._sync: asyncio.Task[None] | None = None
        self.raw: MatrixClient | None = None

    async def start(self) -> None:
        resp = await self.client.login(self.password, device_name="nio test device")
        assert isinstance(resp, LoginResponse), resp
        self.raw = MatrixClient(self.synapse.url, self.client.access_token, self.user_id)
        self.client.add_event_callback(self._on_event, Event)  # type: ignore[arg-type]
        await self.client.sync(timeout=0, full_state=True)
        # A plain sync does not publish the device keys.
        if self.client.should_upload_keys:
            await self.client.keys_upload()
        self._sync = asyncio.create_task(self.client.sync_forever(timeout=300))

    async def _on_event(self, room: Any, event: Event) -> None:
        self.events.append((room.room_id, event))

    async def close(self) -> None:
        if self._sync:
            self._sync.cancel()
            try:
                await self._sync
            except (asyncio.CancelledError, Exception):
                pass
        await self.client.close()
        if self.raw:
            await self.raw.close()

    # --- waiting ---

    async def wait_for(
        self, room_id: str, pred: Callable[[Event], bool], limit_s: float = 45.0, what: str = ""
    ) -> Event:
        loop = asyncio.get_running_loop()
        end = loop.time() + limit_s
        seen = 0
        while True:
            for rid, evt in self.events[seen:]:
                if rid == room_id and pred(evt):
                    return evt
            if loop.time() >= end:
                got = [
                    f"{type(e).__name__} {e.source.get('type')} from {e.sender}: "
                    f"{str(e.source.get('content', {}).get('body', ''))[:60]!r}"
                    for r, e in self.events
                    if r == room_id
                ]
                raise AssertionError(
                    f"{self.user_id}: no {what or 'matching event'} in {room_id} within"
                    f" {limit_s} s; got {got}"
                )
            await asyncio.sleep(0.1)

    async def wait_for_body(self, room_id: str, text: str, sender: str | None = None) -> Event:
        def match(e: Event) -> bool:
            body = e.source.get("content", {}).get("body", "")
            return (
                isinstance(body, str)
                and text in body
                and (sender is None or e.sender == sender)
                and not isinstance(e, MegolmEvent)
            )

        return await self.wait_for(room_id, match, what=f"message with {text!r}")

    async def wait_room(self, room_id: str) -> None:
        """Until the client's sync knows the room (nio encrypts only for rooms it knows)."""
        for _ in range(300):
            if room_id in self.client.rooms:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.user_id} never synced {room_id}")

    async def wait_member(self, room_id: str, user_id: str) -> None:
        for _ in range(300):
            room = self.client.rooms.get(room_id)
            if room is not None and user_id in room.users:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{user_id} never joined {room_id} for {self.user_id}")

    # --- acting ---

    async def create_encrypted_room(self, invite: list[str], is_direct: bool = False) -> str:
        resp = await self.client.room_create(
            invite=invite,
            is_direct=is_direct,
            initial_state=[{"type": "m.room.encryption", "state_key": "", "content": MEGOLM}],
        )
        assert isinstance(resp, RoomCreateResponse), resp
        await self.wait_room(resp.room_id)
        # Until then nio would send in clear.
        for _ in range(300):
            if self.client.rooms[resp.room_id].encrypted:
                return resp.room_id
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.user_id} never saw {resp.room_id} encrypted")

    async def join(self, room: str) -> str:
        resp = await self.client.join(room)
        room_id = getattr(resp, "room_id", None)
        assert room_id, resp
        await self.wait_room(room_id)
        return str(room_id)

    async def send(
        self, room_id: str, content: dict[str, Any], etype: str = "m.room.message"
    ) -> str:
        """Encrypted by nio (it shares its room key with the room's devices first)."""
        resp = await self.client.room_send(room_id, etype, content, ignore_unverified_devices=True)
        assert isinstance(resp, RoomSendResponse), resp
        return str(resp.event_id)

    async def send_text(self, room_id: str, body: str, **extra: Any) -> str:
        return await self.send(room_id, {"msgtype": "m.text", "body": body, **extra})

    async def upload_encrypted(self, data: bytes, mimetype: str, filename: str) -> dict[str, Any]:
        """The ``file`` object of an encrypted attachment, as clients put in the event."""
        resp, keys = await self.client.upload(
            io.BytesIO(data),
            content_type=mimetype,
            filename=filename,
            encrypt=True,
            filesize=len(data),
        )
        assert isinstance(resp, UploadResponse) and keys, resp
        return {**keys, "url": resp.content_uri}

    async def download(self, mxc: str) -> bytes:
        """Authenticated media (the test Synapse refuses anonymous downloads)."""
        server, _, media_id = mxc.removeprefix("mxc://").partition("/")
        url = f"{self.synapse.url}/_matrix/client/v1/media/download/{server}/{media_id}"
        headers = {"Authorization": f"Bearer {self.client.access_token}"}
        async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as r:
            assert r.status == 200, await r.text()
            return await r.read()

    async def send_encrypted_raw(self, room_id: str, etype: str, content: dict[str, Any]) -> str:
        """Encrypt anything, reactions included (nio's room_send leaves those in clear)."""
        if self.client.olm.should_share_group_session(room_id):  # type: ignore[union-attr]
            await self.client.share_group_session(room_id, ignore_unverified_devices=True)
        _, encrypted = self.client.encrypt(room_id, etype, content)
        assert self.raw is not None
        return await self.raw.send_event(room_id, "m.room.encrypted", encrypted)
