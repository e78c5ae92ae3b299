"""The interface the bridge uses for encryption, independent of the library behind it."""

from __future__ import annotations

from typing import Any, Protocol

from ..matrix.txn import TransactionExtras


class DecryptionFailed(Exception):
    """An event the bridge cannot decrypt. ``reason`` says why and ``advice`` what the sender
    can do, both in words for the room."""

    def __init__(self, reason: str, advice: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.advice = advice


class KeyMissing(DecryptionFailed):
    """The room key of an event has not arrived (yet)."""

    def __init__(
        self, room_id: str, session_id: str, sender: str = "", sender_key: str = ""
    ) -> None:
        super().__init__(
            "the bridge has not received the key to decrypt it",
            "your client may not have shared its keys with the bridge's device yet; "
            "send the message again",
        )
        self.room_id = room_id
        self.session_id = session_id
        # Whom to ask for the key: the sender's devices, and the session's Curve25519 key.
        self.sender = sender
        self.sender_key = sender_key


class RoomCrypto(Protocol):
    device_id: str

    async def start(self) -> None:
        """Create or load the bot's device and publish its keys."""

    async def stop(self) -> None: ...

    async def handle_extras(self, extras: TransactionExtras) -> None:
        """To-device messages, device-list changes and key counts of one transaction. Returns
        once what must survive (room keys) is stored: the transaction is acknowledged after."""

    async def is_encrypted(self, room_id: str, as_user: str | None = None) -> bool: ...

    async def note_state(self, event: dict[str, Any]) -> None:
        """A state event of a room (encryption turned on, members coming and going)."""

    async def decrypt(self, event: dict[str, Any]) -> dict[str, Any]:
        """The plain event of an ``m.room.encrypted`` one; raises :class:`DecryptionFailed`."""

    async def wait_for_key(self, missing: KeyMissing, limit_s: float) -> bool:
        """Whether the room key arrived within ``limit_s`` seconds; not there after a few
        seconds, it is asked of the sender's devices (a key they forward counts)."""

    async def keep_waiting(self, event: dict[str, Any]) -> None:
        """Record an event waiting for its key (:class:`KeyMissing`) until :meth:`done_waiting`:
        :meth:`waiting` gives it back after a restart."""

    async def done_waiting(self, event_id: str) -> None: ...

    async def waiting(self) -> list[dict[str, Any]]: ...

    async def encrypt_file(self, data: bytes) -> tuple[bytes, dict[str, Any]]:
        """An attachment for an encrypted room: the ciphertext to upload and the ``file``
        object (without its ``url``) that lets the room's members decrypt it."""

    async def decrypt_file(self, data: bytes, file: dict[str, Any]) -> bytes:
        """An encrypted attachment's content; raises :class:`DecryptionFailed`."""

    async def encrypt(
        self, room_id: str, event_type: str, content: dict[str, Any], as_user: str | None = None
    ) -> dict[str, Any]:
        """The content of the ``m.room.encrypted`` event carrying ``content``, encrypted by the
        bot's device for the room's Matrix users; ``as_user`` is who sends it (a ghost)."""
