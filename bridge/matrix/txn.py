"""Client-server transaction ids derived from remote ids, so that a retried send of the same
remote event is deduplicated by the homeserver instead of posted twice."""

from __future__ import annotations

import hashlib


def derive_txn_id(*parts: str | int) -> str:
    h = hashlib.sha256("\x00".join(str(p) for p in parts).encode()).hexdigest()
    return f"mimi.{h[:40]}"
