"""User avatars over PEP (XEP-0084 on XEP-0163), both ways.

XMPP users' avatars: the connector reads the ``urn:xmpp:avatar:metadata`` node of a user's
bare JID when the user's ghost is first seen (a DM contact's presence or first message, a
DM opened from Matrix, an occupant whose real JID the room shows) and again when the user's
presence announces a new XEP-0153 hash; it then fetches the ``urn:xmpp:avatar:data`` item
whose id the metadata names and sets the picture on the ghost. Event notifications of the
metadata node (``<event xmlns='http://jabber.org/protocol/pubsub#event'>``) do the same: the
puppets' capabilities advertise ``urn:xmpp:avatar:metadata+notify``, so a user's server sends
them to a puppet that the user has allowed to see their presence (a roster subscription
"from" or "both") once the puppet's presence with those capabilities has reached it. Empty
metadata (the user disabled the avatar) removes the ghost's avatar. A PEP avatar wins over a
vCard one; without one (no node, no access, nothing in-band) the vCard path of
:mod:`.profiles` is used. A picture is fetched once per hash, never above
``avatars.MAX_AVATAR_BYTES``, and only kept when it decodes and its SHA-1 is the item id.

Matrix users' avatars: the component answers ``items`` requests for both nodes on each
puppet JID (the picture of the vCard path; metadata is an empty ``<metadata/>`` while the user
has none, the data item is item-not-found) and sends a metadata notification (a headline
message) to the puppet's contacts when the picture changes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slixmpp import JID
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream import ET

from bridge.connector import Attachment, PortalKey, RemoteProfile, Sender

from . import xmpp_to_matrix as inc
from .avatars import MAX_AVATAR_BYTES, Avatar, sniff
from .component import NotConnected, serve_iq
from .jid_mapping import InvalidMapping

if TYPE_CHECKING:
    from .component import Stream
    from .connector import XMPPConnector
    from .identity import Identity

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_PUBSUB_EVENT = "http://jabber.org/protocol/pubsub#event"
NS_DATA = "urn:xmpp:avatar:data"
NS_METADATA = "urn:xmpp:avatar:metadata"
NOTIFY_FEATURE = f"{NS_METADATA}+notify"
# The item id of the metadata the component serves while a Matrix user has no avatar.
NO_AVATAR_ID = "current"

_SHA1 = re.compile(r"[0-9a-f]{40}")
_REMEMBERED = 10_000

log = logging.getLogger(__name__)


class PepError(ValueError):
    """A PEP avatar that cannot be used (the text says why)."""


@dataclass(frozen=True, slots=True)
class Info:
    """One ``<info/>`` of avatar metadata."""

    id: str  # the SHA-1 of the picture, lowercase hex
    mimetype: str
    size: int  # bytes as announced; 0 when missing or not a number
    url: str | None  # stored elsewhere (HTTP), not in the data node


# --- parsing ----------------------------------------------------------------------------------


def parse_metadata(metadata: ET.Element) -> list[Info]:
    """The pictures a metadata payload announces; [] when the avatar is disabled. Entries
    whose id is not a SHA-1 are left out."""
    infos = []
    for el in metadata.findall(f"{{{NS_METADATA}}}info"):
        sha1 = (el.get("id") or "").strip().lower()
        if not _SHA1.fullmatch(sha1):
            continue
        try:
            size = max(int(el.get("bytes") or ""), 0)
        except ValueError:
            size = 0
        url = (el.get("url") or "").strip() or None
        infos.append(Info(sha1, (el.get("type") or "").strip().lower(), size, url))
    return infos


def choose(infos: list[Info], max_bytes: int = MAX_AVATAR_BYTES) -> Info | None:
    """The picture to fetch from the data node: in-band, an image, not announced as larger
    than ``max_bytes``; PNG first (every publisher has to offer one)."""
    fit = [
        i
        for i in infos
        if i.url is None
        and i.size <= max_bytes
        and (not i.mimetype or i.mimetype.startswith("image/"))
    ]
    fit.sort(key=lambda i: i.mimetype != "image/png")
    return fit[0] if fit else None


def decode_data(data: ET.Element | None, info: Info, max_bytes: int = MAX_AVATAR_BYTES) -> Avatar:
    """The picture of a ``<data/>`` payload, checked against its metadata; raises
    :class:`PepError` when it is missing, too big, not base64, not an image or not the
    picture whose SHA-1 the metadata names."""
    if data is None or data.tag != f"{{{NS_DATA}}}data":
        raise PepError("no avatar data in the item")
    text = "".join((data.text or "").split())
    if not text:
        raise PepError("empty avatar data")
    if len(text) > (max_bytes + 2) // 3 * 4:
        raise PepError(f"avatar larger than {max_bytes} bytes")
    try:
        picture = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise PepError(f"avatar data is not base64 ({e})") from e
    if len(picture) > max_bytes:
        raise PepError(f"avatar larger than {max_bytes} bytes")
    sha1 = hashlib.sha1(picture).hexdigest()
    if sha1 != info.id:
        raise PepError(f"avatar data has SHA-1 {sha1}, the metadata says {info.id}")
    mimetype = info.mimetype if info.mimetype.startswith("image/") else sniff(picture)
    if not mimetype.startswith("image/"):
        raise PepError("avatar data is not an image")
    return Avatar(picture, mimetype, sha1)


def result_items(pubsub: ET.Element | None, node: str) -> list[tuple[str, ET.Element | None]]:
    """(id, payload) of the items of ``node`` in a pubsub result, in document order."""
    if pubsub is None:
        return []
    items = pubsub.find(f"{{{NS_PUBSUB}}}items")
    if items is None or items.get("node") != node:
        return []
    return [
        (item.get("id") or "", _payload(item)) for item in items.findall(f"{{{NS_PUBSUB}}}item")
    ]


@dataclass(frozen=True, slots=True)
class Event:
    """What a metadata notification says: the newest item's payload (None: an item without
    payload, so the node has to be read), or that the avatar is gone."""

    removed: bool = False
    has_item: bool = False
    payload: ET.Element | None = None


def parse_event(event: ET.Element) -> Event | None:
    """A ``pubsub#event`` about the metadata node, or None (another node, nothing to use)."""
    for kind in ("purge", "delete"):
        el = event.find(f"{{{NS_PUBSUB_EVENT}}}{kind}")
        if el is not None and el.get("node") == NS_METADATA:
            return Event(removed=True)
    items = event.find(f"{{{NS_PUBSUB_EVENT}}}items")
    if items is None or items.get("node") != NS_METADATA:
        return None
    published = items.findall(f"{{{NS_PUBSUB_EVENT}}}item")
    if published:
        return Event(has_item=True, payload=_payload(published[-1]))
    if items.find(f"{{{NS_PUBSUB_EVENT}}}retract") is not None:
        return Event(removed=True)
    return None


def parse_items_request(pubsub: ET.Element | None) -> tuple[str, list[str]] | None:
    """(node, requested item ids) of an ``items`` retrieval, or None for anything else."""
    if pubsub is None or len(pubsub) != 1:
        return None
    items = pubsub[0]
    if items.tag != f"{{{NS_PUBSUB}}}items" or not items.get("node"):
        return None
    ids = [item.get("id") or "" for item in items.findall(f"{{{NS_PUBSUB}}}item")]
    return items.get("node") or "", ids


def _payload(item: ET.Element) -> ET.Element | None:
    return item[0] if len(item) else None


# --- building ---------------------------------------------------------------------------------


def metadata_payload(avatar: Avatar | None) -> ET.Element:
    """``<metadata/>`` describing a picture; empty (avatar disabled) for None."""
    metadata = ET.Element(f"{{{NS_METADATA}}}metadata")
    if avatar is not None:
        ET.SubElement(
            metadata,
            f"{{{NS_METADATA}}}info",
            {"id": avatar.sha1, "bytes": str(len(avatar.data)), "type": avatar.mimetype},
        )
    return metadata


def data_payload(avatar: Avatar) -> ET.Element:
    data = ET.Element(f"{{{NS_DATA}}}data")
    data.text = base64.b64encode(avatar.data).decode()
    return data


def metadata_item_id(avatar: Avatar | None) -> str:
    return avatar.sha1 if avatar is not None else NO_AVATAR_ID


def items_request(node: str, item_id: str | None = None) -> ET.Element:
    """``<pubsub><items node=…/></pubsub>``: one given item, or the newest one."""
    pubsub = ET.Element(f"{{{NS_PUBSUB}}}pubsub")
    items = ET.SubElement(pubsub, f"{{{NS_PUBSUB}}}items", {"node": node})
    if item_id is None:
        items.set("max_items", "1")
    else:
        ET.SubElement(items, f"{{{NS_PUBSUB}}}item", {"id": item_id})
    return pubsub


def items_result(node: str, item_id: str, payload: ET.Element) -> ET.Element:
    pubsub = ET.Element(f"{{{NS_PUBSUB}}}pubsub")
    items = ET.SubElement(pubsub, f"{{{NS_PUBSUB}}}items", {"node": node})
    ET.SubElement(items, f"{{{NS_PUBSUB}}}item", {"id": item_id}).append(payload)
    return pubsub


def event_element(node: str, item_id: str, payload: ET.Element) -> ET.Element:
    event = ET.Element(f"{{{NS_PUBSUB_EVENT}}}event")
    items = ET.SubElement(event, f"{{{NS_PUBSUB_EVENT}}}items", {"node": node})
    ET.SubElement(items, f"{{{NS_PUBSUB_EVENT}}}item", {"id": item_id}).append(payload)
    return event


# --- the connector's side ---------------------------------------------------------------------


class PepAvatars:
    """XEP-0084 for the XMPP connector (see the module docstring)."""

    def __init__(self, conn: XMPPConnector, max_bytes: int = MAX_AVATAR_BYTES) -> None:
        self.conn = conn
        self.max_bytes = max_bytes
        self.log = conn.log.getChild("pep")
        # Ghost id -> the XEP-0153 hash its presence had when its PEP metadata was read (None:
        # read without one). A ghost not in here has not been looked at yet.
        self._checked: OrderedDict[str, str | None] = OrderedDict()
        # (ghost id, avatar id) whose data was unusable: not fetched again.
        self._bad: OrderedDict[tuple[str, str], None] = OrderedDict()

    def install(self) -> None:
        serve_iq(
            self.conn.component_xmpp,
            "pep",
            f"{{{NS_PUBSUB}}}pubsub",
            lambda iq: self.conn.spawn(self.answer(iq)),
        )

    # --- Matrix users' avatars ----------------------------------------------------------------

    async def answer(self, iq: Any) -> None:
        """An ``items`` request for a puppet JID's avatar nodes."""
        conn = self.conn
        itype = iq.xml.attrib.get("type")
        to = inc.stanza_jid(iq, "to")
        frm = inc.stanza_jid(iq, "from")
        if itype not in ("get", "set") or to is None or frm is None:
            return
        reply = await self._answer(iq, itype, to, frm)
        try:
            conn.component.send(reply)
        except NotConnected:
            pass

    async def _answer(self, iq: Any, itype: str, to: JID, frm: JID) -> Any:
        conn = self.conn
        if itype == "set":
            return self._iq_error(
                iq, to, frm, "forbidden", "Avatars of Matrix users are read-only."
            )
        request = parse_items_request(iq.xml.find(f"{{{NS_PUBSUB}}}pubsub"))
        if request is None:
            return self._iq_error(
                iq, to, frm, "feature-not-implemented", "Only avatar items can be read here."
            )
        node, ids = request
        if not to.user or node not in (NS_METADATA, NS_DATA):
            return self._iq_error(iq, to, frm, "item-not-found", "No such node.")
        try:
            user_id = conn.mapper.matrix_user(to)
        except InvalidMapping as e:
            return self._iq_error(iq, to, frm, "item-not-found", str(e))
        if user_id in conn.sessions or not await conn.messages_in.user_exists(user_id):
            return self._iq_error(iq, to, frm, "item-not-found", "No such Matrix user.")
        await conn.profiles.photo_of(conn.puppet(user_id))
        avatar = await conn.avatars.get(user_id)
        if node == NS_METADATA:
            item_id, payload = metadata_item_id(avatar), metadata_payload(avatar)
        elif avatar is not None:
            item_id, payload = avatar.sha1, data_payload(avatar)
        else:
            return self._iq_error(iq, to, frm, "item-not-found", "This user has no avatar.")
        if ids and item_id not in ids:
            return self._iq_error(iq, to, frm, "item-not-found", "No such item.")
        reply = conn.component_xmpp.make_iq_result(iq.xml.attrib.get("id", ""), ito=frm, ifrom=to)
        reply.xml.append(items_result(node, item_id, payload))
        return reply

    def _iq_error(self, iq: Any, to: JID, frm: JID, condition: str, text: str) -> Any:
        return self.conn.component_xmpp.make_iq_error(
            iq.xml.attrib.get("id", ""),
            type="cancel",
            condition=condition,
            text=text,
            ito=frm,
            ifrom=to,
        )

    def announce(self, identity: Identity) -> None:
        """Tell a puppet's contacts (those who see its presence) its new avatar metadata."""
        if identity.login or not identity.stream.ready.is_set():
            return
        avatar = self.conn.avatars.cached(identity.user_id)
        xmpp = identity.xmpp
        for contact in self.conn.roster.seeing(identity.jid.bare):
            msg = xmpp.make_message(mto=contact, mfrom=identity.jid.bare, mtype="headline")
            msg.xml.append(
                event_element(NS_METADATA, metadata_item_id(avatar), metadata_payload(avatar))
            )
            try:
                identity.stream.send(msg)
            except NotConnected:
                return

    # --- XMPP users' avatars ------------------------------------------------------------------

    def seen(
        self,
        portal: PortalKey,
        sender: Sender,
        whose: JID | None,
        photo: str | None,
        via: JID,
        vcard_of: JID,
    ) -> None:
        """An XMPP user's ghost was seen (``photo``: the XEP-0153 hash its presence carried,
        None: none). ``whose`` is the user's bare JID, None when the room hides it: then only
        the vCard (fetched from ``vcard_of``) can tell the avatar."""
        if whose is None:
            if photo is not None:
                self.conn.profiles.avatar_seen(portal, sender, vcard_of, photo, via)
            return
        ghost = sender.remote_id
        if ghost in self._checked and (photo is None or self._checked[ghost] == photo):
            return
        self._checked[ghost] = photo if photo is not None else self._checked.get(ghost)
        self._checked.move_to_end(ghost)
        while len(self._checked) > _REMEMBERED:
            self._checked.popitem(last=False)
        self.conn.spawn(self._check(portal, sender, JID(whose.bare), photo, via, vcard_of))

    async def _check(
        self,
        portal: PortalKey,
        sender: Sender,
        whose: JID,
        photo: str | None,
        via: JID,
        vcard_of: JID,
    ) -> None:
        metadata = await self._newest_metadata(whose, via)
        if metadata is not None:
            disabled = len(metadata) == 0
            if (not disabled or not photo) and await self._use(
                portal, sender, whose, via, metadata
            ):
                return
        if photo is not None:  # no PEP avatar: the vCard's, if any
            self.conn.profiles.avatar_seen(portal, sender, vcard_of, photo, via)

    async def on_event(self, stream: Stream, msg: Any) -> None:
        """A ``pubsub#event`` message: metadata notifications of XMPP users the bridge has
        a ghost for; anything else is ignored."""
        conn = self.conn
        event_el = msg.xml.find(f"{{{NS_PUBSUB_EVENT}}}event")
        frm = inc.stanza_jid(msg, "from")
        to = inc.stanza_jid(msg, "to")
        if event_el is None or frm is None or to is None:
            return
        if frm.resource or not frm.user or frm.domain == conn.cfg.domain or frm.bare in conn.rooms:
            return  # PEP services are users' bare JIDs
        user_id = conn.presence_in.user_for(stream, to)
        if user_id is None:
            return
        portal = PortalKey("xmpp", frm.bare, receiver=user_id)
        if portal not in conn.known_dms and frm.bare not in self._checked:
            return
        event = parse_event(event_el)
        if event is None:
            return
        whose = JID(frm.bare)
        sender = Sender(frm.bare)
        if event.removed:
            await self._use(portal, sender, whose, to, None)
            return
        metadata = event.payload
        if metadata is None or metadata.tag != f"{{{NS_METADATA}}}metadata":
            metadata = await self._newest_metadata(whose, to)
        if metadata is not None:
            await self._use(portal, sender, whose, to, metadata)

    async def _use(
        self,
        portal: PortalKey,
        sender: Sender,
        whose: JID,
        via: JID,
        metadata: ET.Element | None,
    ) -> bool:
        """Give the ghost the avatar the metadata describes; empty metadata (disabled) or
        None (the node was emptied) removes it. Returns whether PEP settled the avatar."""
        conn = self.conn
        ghost = sender.remote_id
        previous = conn.profiles.ghost_photos.get(ghost)
        if metadata is None or len(metadata) == 0:
            self._remember(ghost, "")
            if previous:
                await conn.emit(RemoteProfile(portal=portal, sender=sender, avatar_removed=True))
            return True
        infos = parse_metadata(metadata)
        info = choose(infos, self.max_bytes)
        if info is None:
            self.log.info("no usable PEP avatar for %s in %s", whose, infos)
            return False
        if previous == info.id:
            return True
        if (ghost, info.id) in self._bad:
            return False
        self._remember(ghost, info.id)  # a second look while this one fetches stops here
        try:
            avatar = await self._fetch(whose, via, info)
        except PepError as e:
            self.log.info("unusable PEP avatar %s of %s: %s", info.id, whose, e)
            self._bad[(ghost, info.id)] = None
            while len(self._bad) > _REMEMBERED:
                self._bad.popitem(last=False)
            avatar = None
        if avatar is None:
            if conn.profiles.ghost_photos.get(ghost) == info.id:
                if previous is None:
                    conn.profiles.ghost_photos.pop(ghost, None)
                else:
                    conn.profiles.ghost_photos[ghost] = previous
            return False
        ext = avatar.mimetype.rpartition("/")[2] or "img"
        await conn.emit(
            RemoteProfile(
                portal=portal,
                sender=sender,
                avatar=Attachment(
                    f"avatar.{ext}", avatar.mimetype, data=avatar.data, size=len(avatar.data)
                ),
            )
        )
        return True

    async def _fetch(self, whose: JID, via: JID, info: Info) -> Avatar | None:
        """The picture of the data item ``info`` names; None when it cannot be read (try
        again later), :class:`PepError` when what came is unusable."""
        pubsub = await self._items(whose, via, NS_DATA, info.id)
        if pubsub is None:
            return None
        found = [data for item_id, data in result_items(pubsub, NS_DATA) if item_id == info.id]
        if not found:  # replaced meanwhile, or published after its metadata
            self.log.info("no PEP avatar data %s from %s", info.id, whose)
            return None
        return decode_data(found[0], info, self.max_bytes)

    async def _newest_metadata(self, whose: JID, via: JID) -> ET.Element | None:
        """The payload of the newest metadata item; None when there is none or it cannot be
        read."""
        items = result_items(await self._items(whose, via, NS_METADATA, None), NS_METADATA)
        for _item_id, payload in items[:1]:
            if payload is not None and payload.tag == f"{{{NS_METADATA}}}metadata":
                return payload
        return None

    async def _items(self, whose: JID, via: JID, node: str, item_id: str | None) -> Any:
        """The ``<pubsub/>`` of an items result, or None (logged) on an error."""
        conn = self.conn
        stream = conn.component
        for session in conn.sessions.values():
            if session.identity.jid.bare == via.bare:
                stream = session.identity.stream
        iq = stream.xmpp.make_iq_get(ito=whose, ifrom=via if stream is conn.component else None)
        iq.xml.append(items_request(node, item_id))
        try:
            result = await iq.send(timeout=conn.cfg.send_timeout)
        except IqError as e:
            self.log.info("no %s from %s: %s", node, whose, inc.error_text(e.iq)[0])
            return None
        except (IqTimeout, NotConnected) as e:
            self.log.info("no %s from %s: %s", node, whose, type(e).__name__)
            return None
        return result.xml.find(f"{{{NS_PUBSUB}}}pubsub")

    def _remember(self, ghost: str, sha1: str) -> None:
        photos = self.conn.profiles.ghost_photos
        photos[ghost] = sha1
        photos.move_to_end(ghost)
        while len(photos) > _REMEMBERED:
            photos.popitem(last=False)
