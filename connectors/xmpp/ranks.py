"""Matrix power levels to MUC ranks (XEP-0045 §8-§10), asked for by the Matrix user's own
occupant: the inverse of :func:`muc.power_level`. 100 makes the member an owner of the room;
50 to 99 a moderator (an owner or admin brought below 100 becomes an admin); below 50 a
participant (an owner or admin brought there becomes a member). The room decides: a Matrix
user whose occupant lacks the rank for a change is told the room's answer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from slixmpp import JID
from slixmpp.exceptions import IqError, IqTimeout

from bridge.connector import ConnectorError, MatrixPowerLevel, NotSupported

from . import matrix_to_xmpp as out
from . import xmpp_to_matrix as inc
from .identity import Identity
from .jid_mapping import parse_room_jid
from .part import Part

if TYPE_CHECKING:
    pass

MODERATOR = 50
OWNER = 100
REFUSED = {
    "not-allowed": "your occupant there may not give or take that rank",
    "forbidden": "your occupant there may not give or take that rank",
    "not-acceptable": "the room does not accept that change",
    "item-not-found": "the member is not in the room",
    "conflict": "the room needs at least one owner",
}


def items_for(
    level: int, previous: int, nick: str | None, real: str | None, affiliation: str
) -> list[dict[str, str]]:
    """The muc#admin items that give a member with ``affiliation`` the rank of ``level``."""
    items: list[dict[str, str]] = []
    new_affiliation = None
    if level >= OWNER > previous:
        new_affiliation = "owner"
    elif previous >= OWNER > level or (affiliation in ("owner", "admin") and level < MODERATOR):
        new_affiliation = "admin" if level >= MODERATOR else "member"
    if new_affiliation is not None and new_affiliation != affiliation:
        if real is None:
            raise NotSupported(
                "the member's address is hidden in this room, so its rank cannot change"
            )
        items.append({"jid": JID(real).bare, "affiliation": new_affiliation})
        affiliation = new_affiliation
    if nick is not None and affiliation not in ("owner", "admin"):
        # Owners and admins are moderators whatever their role says.
        items.append({"nick": nick, "role": "moderator" if level >= MODERATOR else "participant"})
    return items


class Ranks(Part):
    """Sets MUC roles and affiliations for Matrix power level changes."""

    async def set_level(self, identity: Identity, change: MatrixPowerLevel) -> None:
        if change.portal.receiver:
            raise NotSupported("direct chats on XMPP have no ranks")
        room_jid = parse_room_jid(change.portal.remote_id)
        if room_jid is None:
            return
        room = self.c.room_for(room_jid)
        if change.target is not None:
            ro = room.remote_by_ghost(change.target.remote_id)
            ghost = change.target.remote_id
            real = ro.real_jid if ro else (ghost if "/" not in ghost else None)
            nick, affiliation = (ro.nick, ro.affiliation) if ro else (None, "none")
        else:
            occ = room.ours.get(change.target_matrix_user or "")
            if occ is None or occ.state != "joined":
                return  # not in the MUC: nothing to rank (its join carries no rank either)
            nick, real, affiliation = occ.nick, occ.identity.jid.bare, occ.affiliation
        items = items_for(change.level, change.previous, nick, real, affiliation)
        if not items:
            raise ConnectorError("that member is not in the XMPP room")
        await self.c.joins.join(room, identity)
        for item in items:
            iq = out.admin_iq(
                identity.xmpp, ifrom=identity.jid, room=room.jid, item=item, reason=None
            )
            try:
                await iq.send(timeout=self.cfg.send_timeout)
            except IqError as e:
                condition, text = inc.error_text(e.iq)
                why = REFUSED.get(condition, condition)
                detail = f" ({text})" if text else ""
                raise ConnectorError(f"the XMPP room refused: {why}{detail}") from e
            except IqTimeout as e:
                raise ConnectorError("the XMPP room did not answer") from e
