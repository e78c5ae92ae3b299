"""The puppets' presence subscriptions with XMPP contacts (RFC 6121 §3), kept in the table
``xmpp_roster`` so that they survive a restart.

For each puppet (bare JID) and contact (bare JID) an :class:`Item` says whether the contact
sees the puppet's presence (``sub_from``), whether the puppet sees the contact's
(``sub_to``), whether the puppet asked and has no answer yet (``pending_out``), and whether it
ever asked (``asked``: the puppet asks by itself once, never again after an answer).

slixmpp's component keeps its roster in memory only and answers a probe from a contact it does
not know with ``unsubscribed``, which makes the contact's server cancel the contact's
subscription: after a restart, a contact's next probe (when they log in) did that. The
component's own subscription handling is turned off (see :class:`.component.Component`) and
this module answers instead, as a server answers for its users:

* ``subscribe`` to a puppet of a Matrix user who may use the bridge: approved
  (``subscribed``), followed by the puppet's presence, and the puppet asks back unless it
  already sees the contact's presence or asked. To anyone else (or past
  :data:`MAX_CONTACTS`): ``unsubscribed``.
* ``subscribed`` to a request the puppet made: the puppet sees the contact's presence now, and
  sends the contact its presence with caps (so that the contact's server sends it PEP
  notifications). An answer to nothing is ignored; an error answers the request too.
* ``unsubscribe`` / ``unsubscribed``: the subscription in that direction ends (the first one
  gets the puppet's ``unavailable``).
* ``probe``: the puppet's presence (with caps and avatar hash) to a contact with a
  subscription, ``unsubscribed`` to anyone else, never a presence. (Without a database, a
  probe from a contact the puppet does not know gets no answer at all: a subscription from
  before a restart is not known then.)

A Matrix user who opens a DM with an XMPP user has the puppet ask for a subscription
(:meth:`Roster.ask`). When the component connects, every puppet sends its presence to the
contacts who see it and probes the contacts it sees; when the bridge stops, it says
``unavailable`` to them.

Only puppets of Matrix users who may use the bridge get rows, at most
:data:`MAX_CONTACTS` each; stanzas for other addresses change nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slixmpp import JID
from slixmpp.stanza import Presence
from slixmpp.types import PresenceTypes

from . import avatars as avmod
from . import matrix_to_xmpp as out
from . import xmpp_to_matrix as inc
from .component import NotConnected
from .jid_mapping import InvalidMapping

if TYPE_CHECKING:
    from .connector import XMPPConnector
    from .identity import Identity

# The presence types this module answers for the component (an error may answer a request).
ROSTER_TYPES = frozenset(
    {"subscribe", "subscribed", "unsubscribe", "unsubscribed", "probe", "error"}
)
MAX_CONTACTS = 2000  # per puppet

_UPSERT = (
    "INSERT INTO xmpp_roster (puppet, contact, sub_from, sub_to, pending_out, asked)"
    " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (puppet, contact) DO UPDATE SET"
    " sub_from=excluded.sub_from, sub_to=excluded.sub_to, pending_out=excluded.pending_out,"
    " asked=excluded.asked"
)
_DELETE = "DELETE FROM xmpp_roster WHERE puppet=$1 AND contact=$2"


@dataclass(slots=True)
class Item:
    sub_from: bool = False  # the contact sees the puppet's presence
    sub_to: bool = False  # the puppet sees the contact's presence
    pending_out: bool = False  # the puppet asked; no answer yet
    asked: bool = False  # the puppet asked once

    @property
    def subscription(self) -> str:
        """RFC 6121's name of the state: none, from, to or both."""
        if self.sub_from and self.sub_to:
            return "both"
        return "from" if self.sub_from else "to" if self.sub_to else "none"

    def empty(self) -> bool:
        return not (self.sub_from or self.sub_to or self.pending_out or self.asked)


class Roster:
    """The puppets' subscriptions: memory in front of ``xmpp_roster``, writes behind it."""

    def __init__(self, c: XMPPConnector, db: Any = None) -> None:
        self.c = c
        self.db = db
        self.log = c.log.getChild("roster")
        self._items: dict[str, dict[str, Item]] = {}
        self._dirty: dict[tuple[str, str], None] = {}
        self._writer: asyncio.Task[None] | None = None
        self._to_ask: dict[tuple[str, str], None] = {}  # asks waiting for the connection
        self._full: set[str] = set()  # puppets that refused a contact for MAX_CONTACTS

    # --- storage --------------------------------------------------------------------------

    async def setup(self) -> None:
        """Load every puppet's roster."""
        if self.db is None:
            return
        try:
            rows = await self.db.fetch(
                "SELECT puppet, contact, sub_from, sub_to, pending_out, asked FROM xmpp_roster"
            )
        except Exception as e:
            self.log.warning("no database table (%s); subscriptions are kept in memory only", e)
            self.db = None
            return
        for puppet, contact, sub_from, sub_to, pending_out, asked in rows:
            jid = inc.safe_jid(puppet)
            if jid is None or self._puppet_user(jid) is None:
                continue  # another component domain, or a mapping that changed
            self._items.setdefault(puppet, {})[contact] = Item(
                bool(sub_from), bool(sub_to), bool(pending_out), bool(asked)
            )
        self.log.info(
            "loaded %d subscriptions of %d puppets",
            sum(len(items) for items in self._items.values()),
            len(self._items),
        )

    def _forget(self, puppet: str, contact: str) -> None:
        items = self._items.get(puppet, {})
        items.pop(contact, None)
        if not items:
            self._items.pop(puppet, None)

    def _changed(self, puppet: str, contact: str) -> None:
        """Write an item's new state (an item with nothing to remember is deleted)."""
        item = self.item(puppet, contact)
        if item is not None and item.empty():
            self._forget(puppet, contact)
        if self.db is None:
            return
        self._dirty[(puppet, contact)] = None
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="xmpp-roster-writer")

    async def _write(self) -> None:
        while self._dirty:
            keys, self._dirty = list(self._dirty), {}
            upserts, deletes = [], []
            for puppet, contact in keys:
                item = self._items.get(puppet, {}).get(contact)
                if item is None:
                    deletes.append((puppet, contact))
                else:
                    upserts.append(
                        (
                            puppet,
                            contact,
                            int(item.sub_from),
                            int(item.sub_to),
                            int(item.pending_out),
                            int(item.asked),
                        )
                    )
            try:
                async with self.db.acquire() as conn, conn.transaction():
                    if deletes:
                        await conn.executemany(_DELETE, deletes)
                    if upserts:
                        await conn.executemany(_UPSERT, upserts)
            except Exception as e:
                self.log.warning("could not store %d subscriptions: %s", len(keys), e)

    async def flush(self) -> None:
        """Wait until every change so far is in the database."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    # --- reading ------------------------------------------------------------------------------

    def item(self, puppet: str, contact: str) -> Item | None:
        return self._items.get(puppet, {}).get(contact)

    def seeing(self, puppet: str) -> list[str]:
        """The contacts who see a puppet's presence (subscription from or both)."""
        return [c for c, item in self._items.get(puppet, {}).items() if item.sub_from]

    def seen(self, puppet: str) -> list[str]:
        """The contacts whose presence a puppet sees (subscription to or both)."""
        return [c for c, item in self._items.get(puppet, {}).items() if item.sub_to]

    def _new_item(self, puppet: str, contact: str) -> Item | None:
        """The item for a pair, made if there is room for it."""
        items = self._items.get(puppet, {})
        item = items.get(contact)
        if item is None:
            if len(items) >= MAX_CONTACTS:
                if puppet not in self._full:
                    self._full.add(puppet)
                    self.log.warning("%s has %d contacts; refusing more", puppet, MAX_CONTACTS)
                return None
            item = self._items.setdefault(puppet, {})[contact] = Item()
        return item

    def _puppet_user(self, jid: JID) -> str | None:
        if jid.domain != self.c.cfg.domain or not jid.user:
            return None
        try:
            return self.c.mapper.matrix_user(jid)
        except InvalidMapping:
            return None

    async def _may_subscribe(self, user_id: str) -> bool:
        """Whether a Matrix user's puppet takes subscriptions: the user exists and may use
        the bridge (relay users have no puppet of their own)."""
        try:
            user = await self.c.bridge.matrix_user(user_id)
        except Exception:
            return False
        return user is not None and user.permission in ("user", "admin")

    # --- sending ----------------------------------------------------------------------------

    def _send(self, pres: Presence) -> bool:
        try:
            self.c.component.send(pres)
        except NotConnected:
            return False
        return True

    def _subscription(self, puppet: str, contact: str, ptype: PresenceTypes) -> bool:
        xmpp = self.c.component_xmpp
        return self._send(xmpp.make_presence(pfrom=JID(puppet), pto=JID(contact), ptype=ptype))

    async def presence_of(self, user_id: str, contact: str) -> Presence:
        """The puppet's current presence for a contact: ``unavailable`` when the Matrix user is
        offline, else available with its show, status, caps and avatar hash."""
        show, status, offline = self.c.presence.get(user_id, (None, None, False))
        pres = self.c.component_xmpp.make_presence(
            pfrom=self.c.mapper.full_jid(user_id),
            pto=JID(contact),
            ptype="unavailable" if offline else None,
        )
        if show and not offline:
            pres["show"] = show
        if status:
            pres["status"] = status
        if not offline:
            out.add_caps(pres, *self.c.caps)
            avmod.add_photo_update(pres, await self.c.profiles.photo_of(self.c.puppet(user_id)))
        return pres

    # --- incoming subscription stanzas ----------------------------------------------------

    async def on_presence(self, ptype: str, frm: JID, to: JID) -> None:
        """A subscription stanza, probe or presence error from ``frm`` to an address of the
        component."""
        if frm.domain == self.c.cfg.domain or frm.domain.endswith("." + self.c.cfg.domain):
            return  # the bridge's own addresses: nothing to answer
        puppet, contact = to.bare, frm.bare
        user_id = self._puppet_user(to)
        item = self.item(puppet, contact) if user_id is not None else None
        if ptype == "probe":
            if user_id is not None and item is not None and item.sub_from:
                self._send(await self.presence_of(user_id, contact))
            elif user_id is None or self.db is not None:
                # RFC 6121 §4.3.2: no such user, or no subscription: no presence.
                self._subscription(puppet, contact, "unsubscribed")
        elif ptype == "subscribe":
            await self._on_subscribe(user_id, puppet, contact, item)
        elif ptype == "subscribed":
            if user_id is None or item is None or not item.pending_out:
                return  # RFC 6121 §3.1.6: an answer to no request
            item.pending_out, item.sub_to = False, True
            self._changed(puppet, contact)
            self.log.info("%s now sees the presence of %s", puppet, contact)
            # The contact's server learns the puppet's caps (PEP notifications) from it.
            self._send(await self.presence_of(user_id, contact))
        elif ptype == "unsubscribe":
            if item is None or not item.sub_from:
                return
            item.sub_from = False
            self._changed(puppet, contact)
            self._send(
                self.c.component_xmpp.make_presence(
                    pfrom=self.c.mapper.full_jid(str(user_id)),
                    pto=JID(contact),
                    ptype="unavailable",
                )
            )
        elif ptype == "unsubscribed":
            if item is None or not (item.sub_to or item.pending_out):
                return
            refused = item.pending_out
            item.sub_to = item.pending_out = False
            self._changed(puppet, contact)
            self.log.info(
                "%s %s the subscription of %s", contact, "refused" if refused else "ended", puppet
            )
        elif ptype == "error":
            # A request that bounced (no such user or server) is answered too.
            if item is not None and item.pending_out:
                item.pending_out = False
                self._changed(puppet, contact)

    async def _on_subscribe(
        self, user_id: str | None, puppet: str, contact: str, item: Item | None
    ) -> None:
        if user_id is None or (item is None and not await self._may_subscribe(user_id)):
            # RFC 6121 §3.1.3: no such user (here: none who may use the bridge).
            self._subscription(puppet, contact, "unsubscribed")
            return
        if item is None:
            item = self._new_item(puppet, contact)
            if item is None:
                self._subscription(puppet, contact, "unsubscribed")
                return
        self._subscription(puppet, contact, "subscribed")
        if item.sub_from:
            return  # RFC 6121 §3.1.3: approved before, only "subscribed" again
        item.sub_from = True
        self._changed(puppet, contact)
        self._send(await self.presence_of(user_id, contact))
        if not item.sub_to and not item.pending_out:
            # Presence is shared both ways: the puppet asks back (as a client that approves).
            self._send_ask(puppet, contact)

    # --- the puppet asks ----------------------------------------------------------------

    def _send_ask(self, puppet: str, contact: str) -> None:
        """Send the puppet's ``subscribe`` now, or when the component is connected again."""
        item = self._new_item(puppet, contact)
        if item is None:
            return
        if self._subscription(puppet, contact, "subscribe"):
            item.pending_out = item.asked = True
            self._to_ask.pop((puppet, contact), None)
            self._changed(puppet, contact)
        else:
            self._to_ask[(puppet, contact)] = None
            if item.empty():
                self._forget(puppet, contact)

    async def ask(self, identity: Identity, contact: JID) -> None:
        """A Matrix user opened a DM with an XMPP user: the puppet asks to see the contact's
        presence, once (not again after an answer, a refusal or a restart)."""
        if identity.login or contact.resource or not contact.user:
            return  # an own account has its own roster; MUC occupants have no presence
        if contact.domain == self.c.cfg.domain or contact.domain.endswith("." + self.c.cfg.domain):
            return
        puppet, bare = identity.jid.bare, contact.bare
        item = self.item(puppet, bare)
        if item is None or not (item.sub_to or item.pending_out or item.asked):
            self._send_ask(puppet, bare)

    # --- the connection ------------------------------------------------------------------------

    async def announce(self, skip: set[str]) -> None:
        """The component is connected: each puppet (but those in ``skip``, whose presence has
        been sent) sends its presence to the contacts who see it, and probes those it sees;
        asks made while disconnected go out."""
        sent = probes = 0
        for puppet, items in list(self._items.items()):
            user_id = self._puppet_user(JID(puppet))
            if user_id is None:
                continue
            if user_id not in skip and not self.c.presence.get(user_id, (None, None, False))[2]:
                for contact in [c for c, item in items.items() if item.sub_from]:
                    if not self._send(await self.presence_of(user_id, contact)):
                        return
                    sent += 1
            for contact in self.seen(puppet):
                if not self._subscription(puppet, contact, "probe"):
                    return
                probes += 1
        for puppet, contact in list(self._to_ask):
            item = self.item(puppet, contact)
            if item is None or not (item.sub_to or item.pending_out or item.asked):
                self._send_ask(puppet, contact)
            else:
                self._to_ask.pop((puppet, contact), None)
        if sent or probes:
            self.log.info("sent %d presences and %d probes to contacts", sent, probes)

    def goodbye(self) -> None:
        """The bridge stops: every puppet goes offline for the contacts who see it."""
        for puppet, items in self._items.items():
            full = None
            with contextlib.suppress(InvalidMapping):
                user_id = self._puppet_user(JID(puppet))
                full = self.c.mapper.full_jid(user_id) if user_id else None
            if full is None:
                continue
            for contact, item in items.items():
                if item.sub_from:
                    pres = self.c.component_xmpp.make_presence(
                        pfrom=full, pto=JID(contact), ptype="unavailable"
                    )
                    if not self._send(pres):
                        return
