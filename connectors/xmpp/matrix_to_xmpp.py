"""Building XMPP stanzas for Matrix events. Every stanza is built through slixmpp's stanza
objects and ElementTree, never by string concatenation."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Literal

from slixmpp import JID
from slixmpp.basexmpp import BaseXMPP
from slixmpp.stanza import Iq, Message, Presence
from slixmpp.xmlstream import ET

from bridge.connector import MessageContent, MessageKind

from .avatars import add_photo_update
from .styling import html_to_styling, strip_matrix_reply_fallback

NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_ADMIN = "http://jabber.org/protocol/muc#admin"
NS_MUC_OWNER = "http://jabber.org/protocol/muc#owner"
NS_CAPS = "http://jabber.org/protocol/caps"
NS_RETRACT = "urn:xmpp:message-retract:1"
NS_MODERATE = "urn:xmpp:message-moderate:1"
# XEP-0425 before v0.3, a XEP-0422 fastening (mod_muc_moderation in Debian 12's prosody-modules).
NS_MODERATE_0 = "urn:xmpp:message-moderate:0"
NS_RETRACT_0 = "urn:xmpp:message-retract:0"
NS_FASTEN = "urn:xmpp:fasten:0"
NS_FALLBACK = "urn:xmpp:fallback:0"
NS_HINTS = "urn:xmpp:hints"
NS_NICK = "http://jabber.org/protocol/nick"
MsgType = Literal["chat", "groupchat", "normal"]
RETRACT_FALLBACK = (
    "This person attempted to retract a previous message, but it's unsupported by your client."
)


def new_id() -> str:
    return uuid.uuid4().hex


def body_for(content: MessageContent) -> str:
    """The XMPP body of Matrix content: styled text from the HTML when there is HTML, the
    plain text otherwise; ``/me`` for emotes; without Matrix reply fallbacks."""
    if content.html:
        text = html_to_styling(content.html)
    else:
        text = strip_matrix_reply_fallback(content.text)
    if content.kind == MessageKind.EMOTE:
        text = f"/me {text}"
    return text


def message(
    xmpp: BaseXMPP,
    *,
    mfrom: JID,
    mto: JID | str,
    mtype: MsgType,
    body: str | None = None,
    msg_id: str | None = None,
) -> tuple[Message, str]:
    """A message with id = origin-id (XEP-0359); returns it with that id."""
    mid = msg_id or new_id()
    msg = xmpp.make_message(mto=mto, mfrom=mfrom, mtype=mtype)
    msg["id"] = mid
    msg["origin_id"]["id"] = mid
    if body is not None:
        msg["body"] = body
    return msg, mid


def add_hint(msg: Message, hint: str) -> None:
    ET.SubElement(msg.xml, f"{{{NS_HINTS}}}{hint}")


def add_fallback(
    msg: Message, for_ns: str, start: int | None = None, end: int | None = None
) -> None:
    fb = ET.SubElement(msg.xml, f"{{{NS_FALLBACK}}}fallback", {"for": for_ns})
    if start is not None and end is not None:
        ET.SubElement(fb, f"{{{NS_FALLBACK}}}body", {"start": str(start), "end": str(end)})


def add_reply(
    msg: Message, ref_id: str, to: str | None, quoted: str | None, nick: str | None
) -> None:
    """XEP-0461 reply with a quoted XEP-0428 fallback (the quoted text, never ids)."""
    msg["reply"]["id"] = ref_id
    if to:
        msg["reply"]["to"] = to
    if quoted:
        quoted = strip_matrix_reply_fallback(quoted)
        lines = quoted.split("\n")[:3]
        text = "\n".join(lines)
        if len(text) > 200:
            text = text[:200] + "…"
        msg["reply"].add_quoted_fallback(text, nick)


def add_oob(msg: Message, url: str, desc: str | None) -> None:
    msg["oob"]["url"] = url
    if desc:
        msg["oob"]["desc"] = desc


def add_nick(msg: Message, nick: str) -> None:
    el = ET.SubElement(msg.xml, f"{{{NS_NICK}}}nick")
    el.text = nick


def retraction(
    xmpp: BaseXMPP, *, mfrom: JID, mto: JID | str, mtype: MsgType, target: str
) -> Message:
    msg, _ = message(xmpp, mfrom=mfrom, mto=mto, mtype=mtype, body=RETRACT_FALLBACK)
    ET.SubElement(msg.xml, f"{{{NS_RETRACT}}}retract", {"id": target})
    add_fallback(msg, NS_RETRACT)
    add_hint(msg, "store")
    return msg


def moderation_version(features: Iterable[str]) -> int | None:
    """The XEP-0425 version a room's disco#info features offer (the newest), or None."""
    found = set(features)
    if NS_MODERATE in found:
        return 1
    if NS_MODERATE_0 in found:
        return 0
    return None


def moderation_iq(
    xmpp: BaseXMPP,
    *,
    ifrom: JID,
    room: JID,
    target: str,
    reason: str | None,
    version: int = 1,
) -> Iq:
    """XEP-0425 moderation request: retract someone else's message in a MUC, by its
    stanza-id. Version 1 (XEP-0425 v0.3): ``<moderate id=…><retract/></moderate>``;
    version 0: ``<apply-to id=…><moderate><retract/></moderate></apply-to>``."""
    iq = xmpp.make_iq_set(ito=room, ifrom=ifrom)
    if version == 0:
        apply_to = ET.SubElement(iq.xml, f"{{{NS_FASTEN}}}apply-to", {"id": target})
        mod = ET.SubElement(apply_to, f"{{{NS_MODERATE_0}}}moderate")
        ET.SubElement(mod, f"{{{NS_RETRACT_0}}}retract")
        if reason:
            ET.SubElement(mod, f"{{{NS_MODERATE_0}}}reason").text = reason
        return iq
    mod = ET.SubElement(iq.xml, f"{{{NS_MODERATE}}}moderate", {"id": target})
    ET.SubElement(mod, f"{{{NS_RETRACT}}}retract")
    if reason:
        ET.SubElement(mod, f"{{{NS_MODERATE}}}reason").text = reason
    return iq


def reactions(
    xmpp: BaseXMPP, *, mfrom: JID, mto: JID | str, mtype: MsgType, target: str, keys: frozenset[str]
) -> tuple[Message, str]:
    msg, mid = message(xmpp, mfrom=mfrom, mto=mto, mtype=mtype)
    el = ET.SubElement(msg.xml, "{urn:xmpp:reactions:0}reactions", {"id": target})
    for key in sorted(keys):
        ET.SubElement(el, "{urn:xmpp:reactions:0}reaction").text = key
    add_hint(msg, "store")
    return msg, mid


def chat_state(
    xmpp: BaseXMPP, *, mfrom: JID, mto: JID | str, mtype: MsgType, state: str
) -> Message:
    msg = xmpp.make_message(mto=mto, mfrom=mfrom, mtype=mtype)
    msg["chat_state"] = state
    add_hint(msg, "no-store")
    return msg


def displayed(
    xmpp: BaseXMPP, *, mfrom: JID, mto: JID | str, mtype: MsgType, target: str
) -> Message:
    msg = xmpp.make_message(mto=mto, mfrom=mfrom, mtype=mtype)
    ET.SubElement(msg.xml, "{urn:xmpp:chat-markers:0}displayed", {"id": target})
    add_hint(msg, "store")
    return msg


def receipt(xmpp: BaseXMPP, *, mfrom: JID, mto: JID | str, target: str) -> Message:
    msg = xmpp.make_message(mto=mto, mfrom=mfrom, mtype="chat")
    ET.SubElement(msg.xml, "{urn:xmpp:receipts}received", {"id": target})
    return msg


def subject(xmpp: BaseXMPP, *, mfrom: JID, room: JID, text: str) -> Message:
    msg = xmpp.make_message(mto=room, mfrom=mfrom, mtype="groupchat")
    msg["subject"] = text
    if not text:
        # An empty <subject/> clears it; slixmpp drops empty interfaces, so add it directly.
        ET.SubElement(msg.xml, f"{{{msg.namespace}}}subject")
    return msg


def join_presence(
    xmpp: BaseXMPP,
    *,
    pfrom: JID,
    occupant: JID,
    caps: tuple[str, str] | None,
    show: str | None = None,
    status: str | None = None,
    photo: str | None = None,
) -> Presence:
    pres = occupant_presence(
        xmpp, pfrom=pfrom, occupant=occupant, caps=caps, show=show, status=status, photo=photo
    )
    x = ET.SubElement(pres.xml, f"{{{NS_MUC}}}x")
    ET.SubElement(x, f"{{{NS_MUC}}}history", {"maxstanzas": "0"})
    return pres


def occupant_presence(
    xmpp: BaseXMPP,
    *,
    pfrom: JID,
    occupant: JID,
    caps: tuple[str, str] | None,
    show: str | None = None,
    status: str | None = None,
    photo: str | None = None,
) -> Presence:
    """An occupant's available presence (also a nick change, XEP-0045 §7.6, when sent to a
    new nick): show and status, caps (XEP-0115) and the avatar hash (XEP-0153)."""
    pres = xmpp.make_presence(pfrom=pfrom, pto=occupant)
    if show:
        pres["show"] = show
    if status:
        pres["status"] = status
    if caps:
        add_caps(pres, *caps)
    add_photo_update(pres, photo)
    return pres


def add_caps(pres: Presence, node: str, ver: str) -> None:
    ET.SubElement(pres.xml, f"{{{NS_CAPS}}}c", {"hash": "sha-1", "node": node, "ver": ver})


def leave_presence(xmpp: BaseXMPP, *, pfrom: JID, occupant: JID, status: str | None) -> Presence:
    pres = xmpp.make_presence(pfrom=pfrom, pto=occupant, ptype="unavailable")
    if status:
        pres["status"] = status
    return pres


def admin_iq(
    xmpp: BaseXMPP, *, ifrom: JID, room: JID, item: dict[str, str], reason: str | None
) -> Iq:
    """XEP-0045 §8/§9 admin change: kick (role=none by nick), ban (affiliation=outcast)."""
    iq = xmpp.make_iq_set(ito=room, ifrom=ifrom)
    query = ET.SubElement(iq.xml, f"{{{NS_MUC_ADMIN}}}query")
    el = ET.SubElement(query, f"{{{NS_MUC_ADMIN}}}item", item)
    if reason:
        ET.SubElement(el, f"{{{NS_MUC_ADMIN}}}reason").text = reason
    return iq


def instant_room_iq(xmpp: BaseXMPP, *, ifrom: JID, room: JID) -> Iq:
    """XEP-0045 §10.1.2: accept the default configuration of a room we just created."""
    iq = xmpp.make_iq_set(ito=room, ifrom=ifrom)
    query = ET.SubElement(iq.xml, f"{{{NS_MUC_OWNER}}}query")
    ET.SubElement(query, "{jabber:x:data}x", {"type": "submit"})
    return iq


def invite(xmpp: BaseXMPP, *, mfrom: JID, room: JID, to: str, reason: str | None) -> Message:
    msg = xmpp.make_message(mto=room, mfrom=mfrom)
    x = ET.SubElement(msg.xml, "{http://jabber.org/protocol/muc#user}x")
    inv = ET.SubElement(x, "{http://jabber.org/protocol/muc#user}invite", {"to": to})
    if reason:
        ET.SubElement(inv, "{http://jabber.org/protocol/muc#user}reason").text = reason
    return msg


def self_ping(xmpp: BaseXMPP, *, ifrom: JID, occupant: JID) -> Iq:
    iq = xmpp.make_iq_get(ito=occupant, ifrom=ifrom)
    ET.SubElement(iq.xml, "{urn:xmpp:ping}ping")
    return iq


def error_reply(
    xmpp: BaseXMPP, stanza: Message, condition: str, text: str, etype: str = "cancel"
) -> Message:
    """An error bounce for a message (RFC 6120 §8.3)."""
    reply = xmpp.make_message(mto=stanza["from"], mfrom=stanza["to"], mtype="error")
    if stanza.xml.attrib.get("id"):
        reply["id"] = stanza.xml.attrib["id"]
    reply["error"]["type"] = etype
    reply["error"]["condition"] = condition
    reply["error"]["text"] = text
    return reply
