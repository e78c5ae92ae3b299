"""What a Matrix user writes from another client of their remote account (their phone, a
desktop XMPP client) shows in the portal as theirs.

The bridge speaks as the user themselves where it can (double puppeting: :meth:`OwnVoice.puppet`
answers who it may send as). Where it cannot, the portal's usual notice sender (the bot, or the
ghost of a DM opened by inviting it) sends the message, its body prefixed with who wrote it and
from where, so nobody reads it as the bot's or the contact's."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .connector import ConnectorError

if TYPE_CHECKING:
    from .bridge import Bridge
    from .db import Portal


@dataclass(frozen=True, slots=True)
class Voice:
    """Who sends a user's own message in a portal. ``as_user`` is None for the bot;
    ``sender_mxid`` is the sender's user id all the same (for the id mapping); ``label`` is the
    prefix to mark the content with, None when the user speaks themselves."""

    as_user: str | None
    sender_mxid: str
    label: str | None


class OwnVoice:
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    async def puppet(self, user_id: str, room_id: str | None) -> str | None:
        """The Matrix user id the bridge can send as for ``user_id`` in ``room_id``, or None
        (double puppeting: see :mod:`bridge.double_puppet`)."""
        return await self.bridge.double_puppets.puppet(user_id, room_id)

    async def refused(self, user_id: str) -> bool:
        """The homeserver refused the bridge's access as ``user_id``: True when it had it
        (it no longer does)."""
        return await self.bridge.double_puppets.refused(user_id)

    async def voice(self, portal: Portal, user_id: str) -> Voice:
        puppet = await self.puppet(user_id, portal.room_id)
        if puppet is not None:
            return Voice(puppet, puppet, None)
        sender = portal.metadata.get("notice_sender")
        as_user = sender if isinstance(sender, str) else None
        try:
            name = (await self.bridge.matrix_user(user_id)).display_name
        except ConnectorError:
            name = user_id
        network = self.bridge.connector_of(portal.key.network).display_name
        return Voice(
            as_user, as_user or self.bridge.cfg.bot_mxid, f"{name} (from their {network} account)"
        )


def mark(content: dict[str, Any], label: str, sep: str = ": ") -> dict[str, Any]:
    """``content`` (an ``m.room.message``) prefixed with ``label``, in body and HTML alike."""
    out = dict(content)
    body = str(out.get("body", ""))
    escaped = html.escape(label, quote=False)
    formatted = out.get("formatted_body")
    rich = formatted if isinstance(formatted, str) else html.escape(body, quote=False)
    if out.get("msgtype") == "m.emote":
        # The bot's m.emote would read as the bot's action: the name goes into the text.
        out["msgtype"] = "m.text"
        out["body"] = f"* {label} {body}"
        out["formatted_body"] = f"* <strong>{escaped}</strong> {rich}"
    elif out.get("msgtype") in ("m.image", "m.file", "m.audio", "m.video"):
        # The body of a file is its caption; the file keeps its name.
        out.setdefault("filename", body)
        out["body"] = f"{label}: {body}"
        out["formatted_body"] = f"<strong>{escaped}</strong>: {rich}"
    else:
        out["body"] = f"{label}{sep}{body}"
        out["formatted_body"] = f"<strong>{escaped}</strong>{sep}{rich}"
    out["format"] = "org.matrix.custom.html"
    # The user's own name is in the text: it must not notify them of their own message.
    out.setdefault("m.mentions", {})
    return out
