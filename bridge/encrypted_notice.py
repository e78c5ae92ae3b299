"""What the bridge says about encrypted events while it cannot decrypt them.

Modern clients create DMs encrypted, so without an answer a user who writes to the bot hears
nothing at all. Each room hears it at its first encrypted event, then at most once per
:data:`INTERVAL_S` (a conversation does not get one notice per message); the next notice
counts the encrypted events left unanswered in between. The notice is sent unencrypted, which
every client shows, and says what to do instead."""

from __future__ import annotations

import time
from collections.abc import Callable

INTERVAL_S = 600.0


class EncryptedNotices:
    def __init__(
        self, interval_s: float = INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._unanswered: dict[str, int] = {}

    def due(self, room_id: str) -> int | None:
        """None: stay quiet this time (the event is counted). Otherwise answer now; the
        number is how many earlier encrypted events of the room went unanswered."""
        now = self.clock()
        if len(self._last) > 10000:  # rooms quiet for an interval need no memory
            self._last = {r: t for r, t in self._last.items() if now - t < self.interval_s}
        last = self._last.get(room_id)
        if last is not None and now - last < self.interval_s:
            self._unanswered[room_id] = self._unanswered.get(room_id, 0) + 1
            return None
        self._last[room_id] = now
        return self._unanswered.pop(room_id, 0)

    def forget(self, room_id: str) -> None:
        """The notice could not be sent: answer the room's next encrypted event again."""
        self._last.pop(room_id, None)


LEAD = "This bridge cannot read encrypted messages (its admin has not turned encryption on)"


def _missed(n: int) -> str:
    if not n:
        return ""
    plural = "s" if n != 1 else ""
    return f" ({n} more encrypted message{plural} here went unread since the last notice.)"


def for_bot_room(bot: str, prefix: str, missed: int) -> str:
    """A room with the bot that is not a portal (a management room, most often)."""
    return (
        f"{LEAD}, so I could not read what you sent here. Create a room without encryption "
        f"and invite {bot} to talk to me, or send commands starting with `{prefix}` in an "
        "unencrypted room I am in." + _missed(missed)
    )


def for_portal(network: str, alias: str | None, missed: int) -> str:
    join = f", then join {alias} for a new room without encryption" if alias else ""
    return (
        f"Encrypted messages cannot be bridged: {LEAD[0].lower()}{LEAD[1:]}, so what is sent "
        f"here does not reach {network}. Encryption cannot be turned "
        "off in a room: a room admin can `unlink` this room (from their management room with "
        f"the bridge bot){join}." + _missed(missed)
    )


def for_dm(name: str, ghost: str, missed: int) -> str:
    return (
        f"{LEAD}, so your messages in this chat do not reach {name}. Create a room without "
        f"encryption and invite {ghost} to chat with them." + _missed(missed)
    )


def welcome_warning(bot: str) -> str:
    return (
        " This room is encrypted, and this bridge cannot read encrypted messages (its admin"
        " has not turned encryption on): to send commands, create a room without encryption"
        f" and invite {bot}."
    )


def dm_warning(ghost: str) -> str:
    return (
        " But this chat is encrypted, and this bridge cannot read encrypted messages (its admin"
        " has not turned encryption on): create a room without encryption and invite"
        f" {ghost} instead."
    )
