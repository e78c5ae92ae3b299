"""Reading messages out of an account's core: a message's Message-ID (its remote id), whether
a person wrote it, and who reacted to it with what."""

from __future__ import annotations

from typing import Any

from .ids import is_special
from .rpc import Rpc


async def message_id(rpc: Rpc, account: int, msg_id: int, wait_up: float) -> str:
    """The Message-ID (``rfc724_mid``) of an account's message: the same in every core."""
    info = await rpc.call("get_message_info_object", account, msg_id, wait_up=wait_up)
    return str(info["rfc724Mid"])


def from_person(msg: dict[str, Any]) -> bool:
    """Not a system message ("member added": ``ChatModified`` carries those changes)."""
    return not msg.get("isInfo") and not is_special(int(msg.get("fromId", 0)))


def reactions_by(reactions: Any, contact_id: int) -> list[str]:
    """The emoji one contact reacted with, from ``get_message_reactions``."""
    by_contact = (reactions or {}).get("reactionsByContact") or {}
    return list(by_contact.get(str(contact_id)) or [])
