"""Avatars both ways through vCard-temp (XEP-0054) and vCard-based avatars (XEP-0153).

Matrix users' avatars: the component answers vCard requests for each puppet JID (the MUC
forwards a request to an occupant to the occupant's bare JID) with the picture the Matrix user
has, and the puppet's presences carry its SHA-1 in ``vcard-temp:x:update``. The pictures come
from the core's profile changes and are kept in the table ``xmpp_avatar`` so that they are
still served after a restart.

XMPP users' avatars: a presence whose ``vcard-temp:x:update`` hash is new for that user makes
the connector fetch the vCard and set the picture on the user's ghost.

Avatars over PEP (XEP-0084) are in :mod:`.pep`; where a user has one, it wins over the vCard.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from slixmpp.xmlstream import ET

NS_VCARD = "vcard-temp"
NS_VCARD_UPDATE = "vcard-temp:x:update"
MAX_AVATAR_BYTES = 1024 * 1024

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Avatar:
    data: bytes
    mimetype: str
    sha1: str

    @classmethod
    def of(cls, data: bytes, mimetype: str) -> Avatar:
        return cls(data, mimetype, hashlib.sha1(data).hexdigest())


def add_photo_update(pres: Any, sha1: str | None) -> None:
    """XEP-0153 §4.1: ``<photo>hash</photo>`` for a picture, an empty ``<photo/>`` for none;
    nothing when it is not known."""
    if sha1 is None:
        return
    x = ET.SubElement(pres.xml, f"{{{NS_VCARD_UPDATE}}}x")
    photo = ET.SubElement(x, f"{{{NS_VCARD_UPDATE}}}photo")
    if sha1:
        photo.text = sha1


def photo_hash(xml: ET.Element) -> str | None:
    """The hash a presence announces: None when it says nothing about the avatar, "" when it
    says there is none."""
    x = xml.find(f"{{{NS_VCARD_UPDATE}}}x")
    if x is None:
        return None
    photo = x.find(f"{{{NS_VCARD_UPDATE}}}photo")
    if photo is None:
        return None
    return (photo.text or "").strip().lower()


def vcard(name: str | None, avatar: Avatar | None) -> ET.Element:
    card = ET.Element(f"{{{NS_VCARD}}}vCard")
    if name:
        ET.SubElement(card, f"{{{NS_VCARD}}}FN").text = name
        ET.SubElement(card, f"{{{NS_VCARD}}}NICKNAME").text = name
    if avatar is not None:
        photo = ET.SubElement(card, f"{{{NS_VCARD}}}PHOTO")
        ET.SubElement(photo, f"{{{NS_VCARD}}}TYPE").text = avatar.mimetype
        ET.SubElement(photo, f"{{{NS_VCARD}}}BINVAL").text = base64.b64encode(avatar.data).decode()
    return card


def vcard_photo(card: ET.Element | None) -> Avatar | None:
    """The picture of a vCard, or None (no picture, not base64, too big, not an image)."""
    if card is None:
        return None
    photo = card.find(f"{{{NS_VCARD}}}PHOTO")
    if photo is None:
        return None
    binval = "".join((photo.findtext(f"{{{NS_VCARD}}}BINVAL") or "").split())
    if not binval or len(binval) > MAX_AVATAR_BYTES * 4 // 3 + 4:
        return None
    try:
        data = base64.b64decode(binval, validate=True)
    except (binascii.Error, ValueError):
        return None
    mimetype = (photo.findtext(f"{{{NS_VCARD}}}TYPE") or "").strip() or sniff(data)
    if not mimetype.startswith("image/"):
        return None
    return Avatar.of(data, mimetype)


def sniff(data: bytes) -> str:
    """The image type of a picture from its first bytes."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


class AvatarStore:
    """Matrix users' avatars: memory in front of the table ``xmpp_avatar`` (base64 text, so
    that SQLite and PostgreSQL store it alike). ``get`` answers None when the user has no
    known avatar, and :meth:`known_hash` tells "no avatar" ("") from "not known" (None)."""

    def __init__(self, db: Any = None) -> None:
        self.db = db
        self._mem: dict[str, Avatar | None] = {}
        self._not_stored: set[str] = set()  # looked up: nothing in the database

    async def setup(self) -> None:
        if self.db is None:
            return
        try:
            await self.db.fetchval("SELECT 1 FROM xmpp_avatar LIMIT 1")
        except Exception as e:
            log.warning("avatars: no database table (%s); kept in memory only", e)
            self.db = None

    def cached(self, user_id: str) -> Avatar | None:
        """The avatar in memory (None: none, or not loaded yet)."""
        return self._mem.get(user_id)

    def known_hash(self, user_id: str) -> str | None:
        if user_id not in self._mem:
            return None
        avatar = self._mem[user_id]
        return avatar.sha1 if avatar is not None else ""

    async def get(self, user_id: str) -> Avatar | None:
        if user_id in self._mem:
            return self._mem[user_id]
        if self.db is None or user_id in self._not_stored:
            return None
        try:
            row = await self.db.fetchrow(
                "SELECT mimetype, data FROM xmpp_avatar WHERE user_id=$1", user_id
            )
        except Exception as e:
            log.warning("avatars: lookup failed: %s", e)
            return None
        if row is None:
            self._not_stored.add(user_id)
            return None
        avatar = Avatar.of(base64.b64decode(row[1]), row[0])
        self._mem[user_id] = avatar
        return avatar

    async def load(self, user_id: str) -> str | None:
        """Load a user's avatar from the database into memory; return its hash (or None)."""
        await self.get(user_id)
        return self.known_hash(user_id)

    async def set(self, user_id: str, avatar: Avatar | None) -> bool:
        """Remember a user's avatar (None: removed). Returns whether it changed."""
        if user_id not in self._mem:
            await self.get(user_id)
        before = self.known_hash(user_id)
        self._mem[user_id] = avatar
        self._not_stored.discard(user_id)
        if before == self.known_hash(user_id):
            return False
        if self.db is not None:
            try:
                if avatar is None:
                    await self.db.execute("DELETE FROM xmpp_avatar WHERE user_id=$1", user_id)
                else:
                    await self.db.execute(
                        "INSERT INTO xmpp_avatar (user_id, mimetype, data) VALUES ($1, $2, $3)"
                        " ON CONFLICT (user_id) DO UPDATE SET mimetype=excluded.mimetype,"
                        " data=excluded.data",
                        user_id,
                        avatar.mimetype,
                        base64.b64encode(avatar.data).decode(),
                    )
            except Exception as e:
                log.warning("avatars: could not store the avatar of %s: %s", user_id, e)
        return True
