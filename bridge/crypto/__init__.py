"""End-to-bridge encryption: the bridge bot's own Matrix device decrypts what Matrix users send
into encrypted rooms and encrypts what the bridge sends there (for the bot and every ghost).

The rest of the bridge sees only :class:`RoomCrypto`; :mod:`.olm` implements it with
mautrix's ``OlmMachine``, so the implementation can be replaced without touching callers."""

from .base import DecryptionFailed, KeyMissing, RoomCrypto

__all__ = ["DecryptionFailed", "KeyMissing", "RoomCrypto"]
