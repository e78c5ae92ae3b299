"""Encrypting login credentials at rest with the config's ``bridge.credentials_key``."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.fernet import Fernet


class CredentialError(Exception):
    pass


class CredentialBox:
    def __init__(self, key: str) -> None:
        self._key = base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest())
        self._cipher: Fernet | None = None

    def _fernet(self) -> Fernet:
        # Imported when first needed: the library takes about 6 MiB of a bridge that stores
        # no login (an IRC-only bridge without SASL, say).
        if self._cipher is None:
            from cryptography.fernet import Fernet

            self._cipher = Fernet(self._key)
        return self._cipher

    def seal(self, credentials: dict[str, Any]) -> str:
        return self._fernet().encrypt(json.dumps(credentials).encode()).decode()

    def open(self, token: str) -> dict[str, Any]:
        from cryptography.fernet import InvalidToken

        try:
            return dict(json.loads(self._fernet().decrypt(token.encode())))
        except (InvalidToken, ValueError) as e:
            raise CredentialError(
                "stored credentials cannot be decrypted (was bridge.credentials_key changed?)"
            ) from e
