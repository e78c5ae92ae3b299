"""Messages encrypted in a new room before the bot's device was a member: some clients
(Element X) send a new DM's first message at once, before the invited ghost brings the bot in.
The homeserver never pushed them (no bridge user had joined), and the client encrypted them
for the members of the time, so the bot's device has no key for them: the bridge finds them in
the room's history and, unless one turns out readable, tells their senders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..matrix.homeserver import Homeserver, quote_segment

# A new room's history before the bot joined is short; this bounds the look back.
LOOK_BACK = 50


def early_notice(sender: str, count: int) -> str:
    one = count == 1
    what = "your message" if one else f"your {count} messages"
    it, was = ("it", "was") if one else ("them", "were")
    return (
        f"{sender}: the bridge could not decrypt {what} sent before it joined this chat, so"
        f" {'it' if one else 'they'} {was} not bridged: your client encrypted {it} for the"
        " members of the time, and clients do not answer the bridge's requests for such keys."
        f" Send {it} again now that the bridge is here."
    )


async def encrypted_before_join(
    hs: Homeserver, room_id: str, is_bridge_user: Callable[[str], bool]
) -> list[dict[str, Any]]:
    """Encrypted events of Matrix users older than the bot's join, oldest first."""
    resp = await hs.request(
        "GET",
        f"/_matrix/client/v3/rooms/{quote_segment(room_id)}/messages",
        query={"dir": "b", "limit": str(LOOK_BACK)},
    )
    out: list[dict[str, Any]] = []
    bot_joined = False
    for evt in resp.get("chunk") or []:  # newest first
        if not isinstance(evt, dict):
            continue
        if (
            evt.get("type") == "m.room.member"
            and evt.get("state_key") == hs.bot_mxid
            and (evt.get("content") or {}).get("membership") == "join"
        ):
            bot_joined = True
            continue
        sender = evt.get("sender")
        if (
            bot_joined
            and evt.get("type") == "m.room.encrypted"
            and isinstance(sender, str)
            and not is_bridge_user(sender)
        ):
            out.append({**evt, "room_id": room_id})
    out.reverse()
    return out
