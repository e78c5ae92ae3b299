"""The bot's device is cross-signed (clients that hide unverified devices show what it
encrypts): what a client reads from /keys/query is checked with the client's own crypto
library, across restarts, a device lost on the homeserver and a fresh database."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from mautrix.api import Method
from mautrix.api import Path as MxPath
from vodozemac import Ed25519PublicKey, Ed25519Signature

from tests.conftest import BridgeFactory
from tests.e2ee.conftest import NioFactory
from tests.e2ee.helpers import BOT, encrypted_management_room
from tests.helpers import until


def _verify(obj: dict[str, Any], key: str) -> bool:
    """Whether ``obj`` carries a valid signature by the ed25519 ``key`` of the bot."""
    sig = (obj.get("signatures") or {}).get(BOT, {}).get(f"ed25519:{key}")
    if not sig:
        return False
    signed = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    canonical = json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        Ed25519PublicKey.from_base64(key).verify_signature(
            canonical.encode(), Ed25519Signature.from_base64(sig)
        )
    except Exception:
        return False
    return True


async def _bot_identity(nio_user: NioFactory, device_id: str) -> tuple[str, bool]:
    """The bot's master key as a client sees it, and whether the device is cross-signed."""
    viewer = await nio_user()
    assert viewer.raw is not None
    resp = await viewer.raw.call(
        "POST", "/_matrix/client/v3/keys/query", json={"device_keys": {BOT: []}}
    )
    master = resp["master_keys"][BOT]
    ssk = resp["self_signing_keys"][BOT]
    (master_key,) = master["keys"].values()
    (ssk_key,) = ssk["keys"].values()
    device = resp["device_keys"].get(BOT, {}).get(device_id)
    signed = device is not None and _verify(ssk, master_key) and _verify(device, ssk_key)
    return master_key, signed


def _sealed_recovery_key(db: Path) -> str:
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT value FROM mimi_crypto_secret WHERE name='recovery_key'")
        return str(rows.fetchone()[0])


async def test_bot_device_is_cross_signed_and_stays_so(
    make_bridge: BridgeFactory,
    nio_user: NioFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    bridge = await make_bridge(encryption={"allow": True})
    assert bridge.crypto is not None
    device = bridge.crypto.device_id
    master, signed = await _bot_identity(nio_user, device)
    assert signed, "the bot's device is not signed by its self-signing key"
    db = tmp_path / "bridge.db"
    sealed = _sealed_recovery_key(db)
    await bridge.stop()

    # The recovery key is printed on request only; the log has a hint of it, not the key.
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "-c",
        str(bridge.cfg.path),
        "--show-recovery-key",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await cli.communicate()
    assert cli.returncode == 0
    key = out.decode().strip()
    assert len(key.replace(" ", "")) == 48 and key not in sealed
    hints = [r.getMessage() for r in caplog.records if "recovery key" in r.getMessage()]
    assert hints and all(key not in h for h in hints)
    assert any(f"{key[:4]}…{key[-4:]}" in h for h in hints)

    # A restart: the same identity, the device still signed, no new recovery key.
    again = await make_bridge(encryption={"allow": True})
    assert again.crypto is not None and again.crypto.device_id == device
    assert await _bot_identity(nio_user, device) == (master, True)
    assert _sealed_recovery_key(db) == sealed

    # The device deleted on the homeserver (its signatures go with it) and made again: it is
    # signed again by the same identity, opened with the stored recovery key.
    await again.hs.request(Method.DELETE, MxPath.v3.devices[device], {})
    assert (await _bot_identity(nio_user, device))[1] is False
    await again.stop()
    third = await make_bridge(encryption={"allow": True})
    assert third.crypto is not None and third.crypto.device_id == device
    assert await _bot_identity(nio_user, device) == (master, True)
    assert _sealed_recovery_key(db) == sealed


async def test_a_fresh_database_gets_a_new_identity(
    make_bridge: BridgeFactory, nio_user: NioFactory, tmp_path: Path
) -> None:
    """The homeserver lets the appservice replace the bot's cross-signing keys without
    interactive authentication: a bridge that lost its database signs its new device."""
    first = await make_bridge(encryption={"allow": True})
    assert first.crypto is not None
    old_master, _ = await _bot_identity(nio_user, first.crypto.device_id)
    await first.stop()
    other = await make_bridge(
        database=f"sqlite://{tmp_path / 'other.db'}", encryption={"allow": True}
    )
    assert other.crypto is not None
    new_master, signed = await _bot_identity(nio_user, other.crypto.device_id)
    assert signed and new_master != old_master


async def test_senders_without_cross_signing_cause_no_warnings(
    make_bridge: BridgeFactory, nio_user: NioFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Trust levels are not acted on: a user without cross-signing keys (as most test
    clients) is no warning at each message, only a debug line."""
    caplog.set_level(logging.DEBUG, logger="mimi.crypto")
    await make_bridge(encryption={"allow": True})
    alice = await nio_user()
    room = await encrypted_management_room(alice)
    for _ in range(2):
        await alice.send_text(room, "help")
    await until(
        lambda: len([e for r, e in alice.events if "login <network>" in str(e.source)]) == 2,
        45,
    )
    about = [
        r
        for r in caplog.records
        if "cross-sign" in r.getMessage() and alice.user_id in r.getMessage()
    ]
    assert about, "mautrix said nothing of her keys: the check below proves nothing"
    assert all(r.levelno == logging.DEBUG for r in about), [r.getMessage() for r in about]
