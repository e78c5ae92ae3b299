"""XEP-0045 state: the bridge's puppet occupants and the remote occupants of each room.

A room is "heard" through one *listener*: the first of the bridge's occupants (in join
order) that is joined or joining. Every occupant receives a copy of each groupchat message
and presence; only the listener's copies are turned into Matrix events, the others are used
for their own self-presence and errors only.
"""

from __future__ import annotations

import asyncio
import time
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from slixmpp import JID
from slixmpp.jid import InvalidJID

if TYPE_CHECKING:
    from .identity import Identity

# Status codes (XEP-0045 §15.6).
# Claimed groupchat messages remembered per room (copies of one message arrive together).
CLAIMS_KEPT = 2000
SELF = 110
NON_ANONYMOUS = 100
ROOM_CREATED = 201
NICK_MODIFIED = 210
NICK_CHANGED = 303
BANNED = 301
KICKED = 307
REMOVED_AFFILIATION = 321
REMOVED_MEMBERS_ONLY = 322
SHUTDOWN = 332
REMOVED_TECHNICAL = 333
CONFIG_CHANGED = 104

JOIN_ERRORS = {
    "conflict": "the nickname is taken",
    "not-authorized": "the room needs a password",
    "forbidden": "you are banned from the room",
    "registration-required": "the room is members-only",
    "item-not-found": "the room does not exist (or is locked)",
    "not-allowed": "the room cannot be created",
    "not-acceptable": "the nickname is not acceptable to the room",
    "service-unavailable": "the room is full or unavailable",
    "jid-malformed": "the nickname is not valid",
    "remote-server-not-found": "the room's server cannot be reached",
    "remote-server-timeout": "the room's server did not answer",
}

# Affiliation / role -> Matrix power level.
AFFILIATION_POWER = {"owner": 100, "admin": 50, "member": 0, "none": 0, "outcast": 0}
ROLE_POWER = {"moderator": 50, "participant": 0, "visitor": 0, "none": 0}


def power_level(affiliation: str, role: str) -> int:
    return max(AFFILIATION_POWER.get(affiliation, 0), ROLE_POWER.get(role, 0))


def clean_nick(name: str, fallback: str) -> str:
    """A nickname XMPP servers accept: no control or format characters, trimmed, at most
    64 characters."""
    cleaned = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C" or ch == " ").strip()
    cleaned = " ".join(cleaned.split())[:64].strip()
    for candidate in (cleaned, fallback):
        if not candidate:
            continue
        try:
            JID(f"room@example.org/{candidate}")
        except InvalidJID:
            continue
        return candidate
    return "matrix-user"


def nick_candidate(base: str, suffix: str, attempt: int) -> str:
    """``base``, then ``base [m]``, ``base [m2]``, ``base [m3]``, ... for nick conflicts."""
    if attempt == 0:
        return base
    if attempt == 1:
        return f"{base} {suffix}"
    if suffix.endswith("]") or suffix.endswith(")"):
        return f"{base} {suffix[:-1]}{attempt}{suffix[-1]}"
    return f"{base} {suffix}{attempt}"


@dataclass(eq=False)
class Occupant:
    """One Matrix user in one room."""

    identity: Identity
    room: JID
    display_name: str
    nick: str | None = None  # the nick we asked for or got
    state: str = "left"  # left | joining | joined
    waiter: asyncio.Future[tuple[str, set[int], str]] | None = None
    join_task: asyncio.Task[None] | None = None
    wanted: bool = True  # the Matrix user is in the portal: rejoin after drops
    last_error: str | None = None
    pending_nick: str | None = None  # asked for in a nick change, not confirmed yet
    photo: str | None = None  # the avatar hash (XEP-0153) its presence in the room carries
    affiliation: str = "none"  # as its own presence in the room last said
    role: str = "participant"

    @property
    def occupant_jid(self) -> JID:
        return JID(f"{self.room.bare}/{self.nick}")


class OccupantMap(dict[str, Occupant]):
    """Matrix user id -> occupant, also indexed by the occupant's own JID (as a string)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_jid: dict[str, Occupant] = {}

    def __setitem__(self, user_id: str, occ: Occupant) -> None:
        old = self.get(user_id)
        if old is not None:
            self.by_jid.pop(old.identity.jid_str, None)
        super().__setitem__(user_id, occ)
        self.by_jid[occ.identity.jid_str] = occ

    def __delitem__(self, user_id: str) -> None:
        occ = self[user_id]
        super().__delitem__(user_id)
        if self.by_jid.get(occ.identity.jid_str) is occ:
            del self.by_jid[occ.identity.jid_str]

    def pop(self, user_id: str, default: Any = None) -> Any:
        if user_id not in self:
            return default
        occ = self[user_id]
        del self[user_id]
        return occ


@dataclass(eq=False)
class RemoteOccupant:
    nick: str
    ghost_id: str
    real_jid: str | None = None
    role: str = "participant"
    affiliation: str = "none"
    photo: str | None = None  # the last avatar hash (XEP-0153) of its presence


@dataclass(eq=False)
class MucRoom:
    jid: JID
    ours: OccupantMap = field(default_factory=OccupantMap)  # Matrix user id -> occupant
    remote: dict[str, RemoteOccupant] = field(default_factory=dict)  # nick -> occupant
    subject: str | None = None
    name: str | None = None
    last_activity: float = field(default_factory=time.monotonic)
    non_anonymous: bool = False
    # Nicks seen while (re)joining; remote occupants not in it have left meanwhile.
    sync_seen: set[str] | None = None
    # Groupchat messages read (sender JID and id) -> the occupant JID whose copy was read.
    claims: OrderedDict[str, str] = field(default_factory=OrderedDict)

    def claim(self, frm: str, mid: str | None, to: str) -> bool:
        """Whether the copy of the groupchat message ``mid`` from ``frm`` that came for ``to``
        is the one to read: the first copy to arrive (for whichever of the bridge's occupants,
        on whichever stream) claims the message. Without an id, the listener's copy is."""
        if not mid:
            listener = self.listener()
            return listener is None or listener.identity.jid_str == to
        key = f"{frm}\0{mid}"
        owner = self.claims.get(key)
        if owner is None:
            self.claims[key] = to
            while len(self.claims) > CLAIMS_KEPT:
                self.claims.popitem(last=False)
            return True
        return owner == to

    def listener(self) -> Occupant | None:
        for occ in self.ours.values():
            if occ.state in ("joining", "joined"):
                return occ
        return None

    def joined(self) -> list[Occupant]:
        return [o for o in self.ours.values() if o.state == "joined"]

    def by_nick(self, nick: str) -> Occupant | None:
        for occ in self.ours.values():
            if (occ.nick == nick or occ.pending_nick == nick) and occ.state != "left":
                return occ
        return None

    def by_identity_jid(self, jid: JID) -> Occupant | None:
        occ = self.ours.by_jid.get(str(jid))
        if occ is not None and occ.identity.jid == jid:
            return occ
        for occ in self.ours.values():  # a JID written differently, or a rebound login
            if occ.identity.jid == jid:
                return occ
        return None

    def remote_by_ghost(self, ghost_id: str) -> RemoteOccupant | None:
        for occ in self.remote.values():
            if occ.ghost_id == ghost_id:
                return occ
        return None

    def touch(self) -> None:
        self.last_activity = time.monotonic()
