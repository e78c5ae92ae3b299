"""The crypto store, keeping the plaintext of the Megolm messages the bridge decrypts.

mautrix checks the sender's device and the message index as it decrypts, but the event it
returns is parsed into its own types, which drops and rewrites fields of the content. Decrypting
the ciphertext a second time for the payload as sent would double the work of every message:
instead the session's own decryption hands its plaintext over, for the ciphertexts asked for."""

from __future__ import annotations

from typing import Any

from mautrix.crypto import InboundGroupSession, PgCryptoStore
from mautrix.types import RoomID, SessionID


class PlaintextKeepingStore(PgCryptoStore):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Ciphertext -> its plaintext (None until decrypted); only while a decryption runs.
        self._plaintexts: dict[str, str | None] = {}

    def expect(self, ciphertext: str) -> None:
        """Keep the plaintext of ``ciphertext`` when a session decrypts it."""
        self._plaintexts[ciphertext] = None

    def take(self, ciphertext: str) -> str | None:
        """The plaintext kept for ``ciphertext`` (None if it was not decrypted), forgotten."""
        return self._plaintexts.pop(ciphertext, None)

    async def get_group_session(
        self, room_id: RoomID, session_id: SessionID
    ) -> InboundGroupSession | None:
        session = await super().get_group_session(room_id, session_id)
        if session is None:
            return None
        decrypt = session.decrypt
        kept = self._plaintexts

        def keeping(ciphertext: str, unicode_errors: str = "replace") -> tuple[str, int]:
            plaintext, index = decrypt(ciphertext, unicode_errors)
            if ciphertext in kept:
                kept[ciphertext] = plaintext
            return plaintext, index

        session.decrypt = keeping  # type: ignore[method-assign,assignment]
        return session
