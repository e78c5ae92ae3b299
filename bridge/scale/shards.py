"""Which shard owns a piece of work: a Matrix user's puppet (or login) by a hash of the user id,
a network's bot, listener or component by the network's ``main`` shard.

The mapping is part of the wire contract between processes of different versions (a core and
its workers are upgraded one at a time), so it must never change: CRC-32 of the UTF-8 user id,
modulo the shard count."""

from __future__ import annotations

import re
import zlib

DEFAULT_SHARDS = 256
MAIN = "main"
# A shard name is a key in a NATS key-value bucket and a subject token: the network's name
# must be one token (no dots, no wildcards).
_NETWORK_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def _check(network: str, shards: int) -> None:
    if not _NETWORK_RE.match(network):
        raise ValueError(
            f"network name {network!r} cannot name a shard: use letters, digits, '_' and '-'"
        )
    if shards < 1:
        raise ValueError(f"a network needs at least one shard, not {shards}")


def shard_of(network: str, matrix_user_id: str | None, shards: int = DEFAULT_SHARDS) -> str:
    """``'<network>.<n>'`` for a Matrix user's puppet or login, ``'<network>.main'`` for
    ``None`` (the network's bot, listener or XMPP component)."""
    _check(network, shards)
    if matrix_user_id is None:
        return f"{network}.{MAIN}"
    return f"{network}.{zlib.crc32(matrix_user_id.encode('utf-8')) % shards}"


def all_shards(network: str, shards: int = DEFAULT_SHARDS) -> list[str]:
    """Every shard of a network: the numbered ones, then ``'<network>.main'``."""
    _check(network, shards)
    return [f"{network}.{n}" for n in range(shards)] + [f"{network}.{MAIN}"]
