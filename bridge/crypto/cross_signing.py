"""Cross-signing of the bot's device: clients that hide messages from devices their owner did
not verify (Element's "exclude insecure devices") show bridged messages only when the bot's
device is signed by the bot's self-signing key.

The bot's cross-signing keys live in the bot's secret storage on the homeserver, encrypted
with a recovery key; the bridge keeps that recovery key sealed in its database (like login
credentials), so a new device of the bot is signed with the same identity after a restart."""

from __future__ import annotations

import logging
from typing import Any

from mautrix.crypto import OlmMachine
from mautrix.crypto.signature import verify_signature_json
from mautrix.errors import MatrixError as MautrixError
from mautrix.types import DeviceID, UserID

from ..credentials import CredentialError
from .store import CryptoSecrets


def recovery_hint(key: str) -> str:
    """Enough of a recovery key to recognise it, not to use it."""
    return f"{key[:4]}…{key[-4:]}"


async def signed_on_server(machine: OlmMachine, user_id: str, device_id: str) -> bool:
    """Whether the homeserver holds a valid signature of the device by the user's current
    self-signing key, itself signed by the master key (what clients check)."""
    user = UserID(user_id)
    resp = await machine.client.query_keys({user: [DeviceID(device_id)]})
    device = resp.device_keys.get(user, {}).get(DeviceID(device_id))
    master, ssk = resp.master_keys.get(user), resp.self_signing_keys.get(user)
    if device is None or master is None or ssk is None:
        return False
    master_key, ssk_key = master.first_ed25519_key, ssk.first_ed25519_key
    if not master_key or not ssk_key:
        return False
    ssk_json: Any = ssk.serialize()
    device_json: Any = device.serialize()
    return verify_signature_json(ssk_json, user, master_key, master_key) and verify_signature_json(
        device_json, user, ssk_key, ssk_key
    )


async def cross_sign_bot(
    machine: OlmMachine, secrets: CryptoSecrets, user_id: str, device_id: str, log: logging.Logger
) -> None:
    """Sign the bot's device, with the stored cross-signing identity if there is one, with a
    new one otherwise. A failure is logged, not raised: encryption works without it."""
    try:
        if await signed_on_server(machine, user_id, device_id):
            log.debug("the bot's device is cross-signed")
            return
        stored = await _stored_key(secrets, log)
        if stored is not None:
            try:
                await machine.verify_with_recovery_key(stored)
                log.info("the bot's device %s is cross-signed with its stored identity", device_id)
                return
            except (MautrixError, ValueError, KeyError) as e:
                # Its secret storage was replaced or removed (by another client of the bot's
                # account): a new identity replaces it.
                log.warning(
                    "the stored recovery key (%s) no longer opens the bot's cross-signing"
                    " keys (%s): making new ones",
                    recovery_hint(stored),
                    e,
                )
        key = await machine.generate_recovery_key()
        await secrets.put_recovery_key(key)
        log.info(
            "the bot's device %s is cross-signed; its recovery key (%s) is stored encrypted in"
            " the bridge's database: mimi-bridge --show-recovery-key prints it",
            device_id,
            recovery_hint(key),
        )
    except MautrixError as e:
        log.warning(
            "the bot's device is not cross-signed (%s): clients that hide unverified devices"
            " hide bridged messages in encrypted rooms",
            e,
        )


async def _stored_key(secrets: CryptoSecrets, log: logging.Logger) -> str | None:
    try:
        return await secrets.recovery_key()
    except CredentialError:
        log.warning("the stored recovery key cannot be opened (bridge.credentials_key changed?)")
        return None


async def read_recovery_key(database: str, credentials_key: str) -> str | None:
    """The stored recovery key (for ``mimi-bridge --show-recovery-key``), or None."""
    from ..credentials import CredentialBox
    from ..db import open_database

    db = await open_database(database)
    try:
        if not await db.table_exists("mimi_crypto_secret"):
            return None
        return await CryptoSecrets(db, CredentialBox(credentials_key)).recovery_key()
    finally:
        await db.stop()
