"""The encryption keys of appservice transactions (MSC2409 to-device, MSC3202 device lists and
key counts): parsed under their stable and unstable names, handed to the crypto layer before
the transaction's events and before the acknowledgement, and not handled twice."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.matrix.txn import TransactionExtras, transaction_extras
from tests.conftest import HS_TOKEN, BridgeFactory
from tests.test_appservice_api import call


def test_extras_stable_and_unstable_names() -> None:
    unstable = transaction_extras(
        {
            "de.sorunome.msc2409.to_device": [{"type": "m.room.encrypted"}, "junk"],
            "org.matrix.msc3202.device_lists": {"changed": ["@a:x", 5], "left": ["@b:x"]},
            "org.matrix.msc3202.device_one_time_keys_count": {
                "@bot:x": {"DEV": {"signed_curve25519": 12, "bad": "x"}, "OTHER": 3}
            },
        }
    )
    assert unstable.to_device == [{"type": "m.room.encrypted"}]
    assert (unstable.devices_changed, unstable.devices_left) == (["@a:x"], ["@b:x"])
    assert unstable.otk_counts == {"@bot:x": {"DEV": {"signed_curve25519": 12}}}
    assert unstable.has_msc3202 and unstable
    stable = transaction_extras({"to_device": [{"type": "x"}], "device_lists": {"changed": []}})
    assert stable.to_device == [{"type": "x"}] and stable.has_msc3202
    empty = transaction_extras({"events": []})
    assert not empty and not empty.has_msc3202
    # Only fallback-key types: the homeserver has MSC3202 on, nothing to do.
    fallback = transaction_extras({"org.matrix.msc3202.device_unused_fallback_key_types": {}})
    assert fallback.has_msc3202 and not fallback


async def test_extras_come_first_and_once(
    make_bridge: BridgeFactory, as_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    bridge = await make_bridge(encryption={"allow": True})
    assert bridge.crypto is not None
    crypto: Any = bridge.crypto
    original = crypto.handle_extras
    seen: list[tuple[int, bool]] = []
    fail = [True]

    async def spy(extras: TransactionExtras) -> None:
        # (The homeserver's own transactions come in too: the bridge's start-up probe.)
        if any(m.get("to_device_id") == "NOTOURS" for m in extras.to_device):
            recorded = await bridge.transactions.seen("t-keys")
            seen.append((len(extras.to_device), recorded))
            if fail[0]:
                fail[0] = False
                raise RuntimeError("the database went away")
        await original(extras)

    monkeypatch.setattr(crypto, "handle_extras", spy)
    base = f"http://127.0.0.1:{as_port}"
    body = {
        "events": [
            {
                "type": "m.room.message",
                "room_id": "!nowhere:localhost",
                "sender": "@someone:localhost",
                "event_id": "$t-keys-1",
                "content": {"msgtype": "m.text", "body": "hi"},
            }
        ],
        "de.sorunome.msc2409.to_device": [
            {
                "type": "m.room.encrypted",
                "sender": "@someone:localhost",
                "to_user_id": "@mimibot:localhost",
                "to_device_id": "NOTOURS",
                "content": {},
            }
        ],
    }
    path = "/_matrix/app/v1/transactions/t-keys"
    # The crypto layer fails: not acknowledged, nothing recorded (the homeserver retries).
    status, _ = await call(base, "PUT", path, body, token=HS_TOKEN)
    assert status == 500
    assert not await bridge.transactions.seen("t-keys")
    # The retry: to-device first, while the transaction is not recorded yet.
    status, _ = await call(base, "PUT", path, body, token=HS_TOKEN)
    assert status == 200
    assert await bridge.transactions.seen("t-keys")
    # A replay is answered without handling its to-device messages again.
    status, _ = await call(base, "PUT", path, body, token=HS_TOKEN)
    assert status == 200
    assert seen == [(1, False), (1, False)]
