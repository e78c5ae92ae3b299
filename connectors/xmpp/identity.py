"""Who speaks on the XMPP side: a Matrix user's puppet JID of the component or their own
logged-in account (:class:`Identity`), and a Matrix action held through an outage
(:class:`Outgoing`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from slixmpp import JID
from slixmpp.basexmpp import BaseXMPP
from slixmpp.stanza import Message

from bridge.connector import PortalKey

from .component import Stream

NETWORK = "xmpp"


def conv_of(portal: PortalKey) -> str:
    """The id store's conversation key of a portal (a DM is per Matrix user)."""
    return f"{portal.remote_id}|{portal.receiver}" if portal.receiver else portal.remote_id


def summary(text: str) -> str:
    """A message shortened for notices ("Your message “…” was not delivered")."""
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."


class Identity:
    """A Matrix user on the XMPP side: a puppet JID of the component, or the user's own
    logged-in account."""

    def __init__(self, user_id: str, stream: Stream, jid: JID | None, login: bool) -> None:
        self.user_id = user_id
        self.stream = stream
        self._jid = jid
        self._jid_str: str | None = None
        self.login = login

    @property
    def jid(self) -> JID:
        return self._jid if self._jid is not None else self.stream.xmpp.boundjid

    @property
    def jid_str(self) -> str:
        if self._jid is None:
            return str(self.stream.xmpp.boundjid)
        if self._jid_str is None:
            self._jid_str = str(self._jid)
        return self._jid_str

    @property
    def key(self) -> str:
        """Sender key of this user's own messages in the id store."""
        return f"matrix:{self.user_id}"

    @property
    def xmpp(self) -> BaseXMPP:
        return self.stream.xmpp


@dataclass(eq=False)
class Outgoing:
    """A Matrix action waiting for the XMPP connection to come back."""

    identity: Identity
    portal: PortalKey
    display_name: str
    origin_id: str
    build: Callable[[], Message]
    summary: str
    created: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class LoginSession:
    login_id: str
    identity: Identity
