"""Transactions both ways: client-server transaction ids derived from remote ids (a retried
send of the same remote event is deduplicated by the homeserver instead of posted twice), and
the encryption-related keys of the appservice transactions the homeserver pushes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


def derive_txn_id(*parts: str | int) -> str:
    h = hashlib.sha256("\x00".join(str(p) for p in parts).encode()).hexdigest()
    return f"mimi.{h[:40]}"


# Transaction keys of MSC2409 (to-device) and MSC3202 (device lists, one-time-key counts),
# stable names first.
_TO_DEVICE = ("to_device", "de.sorunome.msc2409.to_device")
_DEVICE_LISTS = ("device_lists", "org.matrix.msc3202.device_lists")
_OTK_COUNTS = ("device_one_time_keys_count", "org.matrix.msc3202.device_one_time_keys_count")
_FALLBACK = (
    "device_unused_fallback_key_types",
    "org.matrix.msc3202.device_unused_fallback_key_types",
)


@dataclass(slots=True)
class TransactionExtras:
    """What a transaction carries for the bridge's own device, beside room events."""

    to_device: list[dict[str, Any]] = field(default_factory=list)
    devices_changed: list[str] = field(default_factory=list)
    devices_left: list[str] = field(default_factory=list)
    # user id -> device id -> algorithm -> count
    otk_counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    # Whether the MSC3202 keys were present at all (the homeserver delivers them).
    has_msc3202: bool = False

    def __bool__(self) -> bool:
        return bool(self.to_device or self.devices_changed or self.devices_left or self.otk_counts)


def _first(body: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        if name in body:
            return body[name]
    return None


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def transaction_extras(body: dict[str, Any]) -> TransactionExtras:
    """The encryption-related parts of a transaction body; malformed parts are left out."""
    out = TransactionExtras()
    to_device = _first(body, _TO_DEVICE)
    if isinstance(to_device, list):
        out.to_device = [m for m in to_device if isinstance(m, dict)]
    lists = _first(body, _DEVICE_LISTS)
    if isinstance(lists, dict):
        out.devices_changed = _strings(lists.get("changed"))
        out.devices_left = _strings(lists.get("left"))
    counts = _first(body, _OTK_COUNTS)
    if isinstance(counts, dict):
        for user_id, devices in counts.items():
            if not isinstance(devices, dict):
                continue
            for device_id, algos in devices.items():
                if isinstance(algos, dict):
                    out.otk_counts.setdefault(str(user_id), {})[str(device_id)] = {
                        str(k): v for k, v in algos.items() if isinstance(v, int)
                    }
    out.has_msc3202 = any(
        _first(body, names) is not None for names in (_DEVICE_LISTS, _OTK_COUNTS, _FALLBACK)
    )
    return out
