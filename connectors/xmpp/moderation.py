"""XEP-0425 message moderation in MUC portals.

Matrix -> XMPP: a Matrix user deletes someone else's message in a MUC portal; their occupant
asks the room to retract it (:meth:`Moderation.retract`). The room's disco#info says which
version of XEP-0425 it speaks: ``urn:xmpp:message-moderate:1`` (v0.3) or the older XEP-0422
fastening form ``urn:xmpp:message-moderate:0`` (the only one of the ``mod_muc_moderation`` in
Debian 12's prosody-modules); a room that offers neither cannot moderate, and one that
refuses (the occupant is no moderator there) answers with an error. Either way the Matrix
user is told; the message is then deleted on Matrix only.

XMPP -> Matrix: the room announces a moderation from its own bare JID, ``moderated by`` the
moderator's occupant JID; :func:`moderator` is the sender of the redaction (the moderator's
ghost). The announcement of a moderation the bridge asked for itself is not bridged back
(:meth:`Moderation.announced`): the Matrix event is gone already.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from slixmpp import JID
from slixmpp.basexmpp import BaseXMPP
from slixmpp.exceptions import IqError, IqTimeout

from bridge.connector import ConnectorError, NotSupported, Sender

from . import matrix_to_xmpp as out
from . import xmpp_to_matrix as inc
from .muc import MucRoom

if TYPE_CHECKING:
    from .identity import Identity

MATRIX_ONLY = "the message was deleted on Matrix only."
UNSUPPORTED = {"feature-not-implemented", "service-unavailable", "bad-request"}
REFUSED = {"forbidden", "not-allowed", "not-authorized"}
# How many moderations the bridge asked for are remembered until the room announces them.
MAX_PENDING = 1000


def refusal(condition: str, text: str) -> ConnectorError:
    """What the Matrix user is told when the room answers a moderation with an error."""
    detail = f"{condition}: {text}" if text else condition
    if condition in UNSUPPORTED:
        return NotSupported(
            f"The XMPP room does not support message moderation (XEP-0425); {MATRIX_ONLY}"
        )
    if condition in REFUSED:
        return ConnectorError(
            "The XMPP room lets only its moderators delete others' messages, and your "
            f"occupant there is none ({detail}); {MATRIX_ONLY}"
        )
    if condition == "item-not-found":
        return ConnectorError(
            f"The XMPP room does not have that message (any more) ({detail}); {MATRIX_ONLY}"
        )
    return ConnectorError(f"The XMPP room refused the deletion ({detail}); {MATRIX_ONLY}")


class Moderation:
    """Moderation requests of the bridge's occupants, and the announcements they cause."""

    def __init__(self, component: BaseXMPP, domain: str, timeout: float) -> None:
        self._component = component  # asks rooms for their features
        self._domain = JID(domain)
        self._timeout = timeout
        self._pending: OrderedDict[tuple[str, str], None] = OrderedDict()

    async def version(self, room: JID) -> int | None:
        """The XEP-0425 version the room offers (asked each time: moderation is rare, and a
        room's features change with its server's modules)."""
        try:
            iq = await self._component.plugin["xep_0030"].get_info(
                jid=JID(room.bare), ifrom=self._domain, local=False, cached=False, timeout=10
            )
        except IqError as e:
            condition = inc.error_text(e.iq)[0]
            raise ConnectorError(
                f"The XMPP room could not be asked about message moderation ({condition}); "
                f"{MATRIX_ONLY}"
            ) from e
        except IqTimeout as e:
            raise ConnectorError(
                f"The XMPP room did not answer about message moderation; {MATRIX_ONLY}"
            ) from e
        return out.moderation_version(iq["disco_info"]["features"])

    async def retract(self, identity: Identity, room: JID, target: str, reason: str | None) -> None:
        """Ask the room, as ``identity``'s occupant, to retract the message whose stanza-id is
        ``target``. Raises NotSupported or ConnectorError with what to tell the user."""
        if not identity.stream.ready.is_set():
            raise ConnectorError(f"The XMPP server is not reachable right now; {MATRIX_ONLY}")
        version = await self.version(room)
        if version is None:
            raise NotSupported(
                f"The XMPP room does not support message moderation (XEP-0425); {MATRIX_ONLY}"
            )
        iq = out.moderation_iq(
            identity.xmpp,
            ifrom=identity.jid,
            room=JID(room.bare),
            target=target,
            reason=reason,
            version=version,
        )
        key = (room.bare, target)
        self._pending[key] = None
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)
        try:
            await iq.send(timeout=self._timeout)
        except IqError as e:
            self._pending.pop(key, None)
            raise refusal(*inc.error_text(e.iq)) from e
        except IqTimeout as e:
            self._pending.pop(key, None)
            raise ConnectorError(f"The XMPP room did not answer the deletion; {MATRIX_ONLY}") from e

    def announced(self, room: JID, target: str) -> bool:
        """The room announces a moderation of ``target``: True if the bridge asked for it
        (then it is done on Matrix already), once."""
        key = (room.bare, target)
        if key not in self._pending:
            return False
        del self._pending[key]
        return True


def moderator(room: MucRoom, by: str | None) -> Sender:
    """The sender of a moderation the room announces: the ghost of the remote occupant
    ``by`` names (``room@service/nick``); the room itself when ``by`` names none (it is
    missing, names an occupant that has left, or one of the bridge's own occupants)."""
    jid = inc.safe_jid(by) if by else None
    if jid is not None and jid.bare == room.jid.bare and jid.resource:
        ro = room.remote.get(jid.resource)
        if ro is not None:
            return Sender(ro.ghost_id, ro.nick)
    return Sender(room.jid.bare, room.name)
