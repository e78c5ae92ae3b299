"""Reading XMPP stanzas into the connector contract's terms.

The functions here are pure: they read one stanza and never raise on malformed input (a bad
attribute, an invalid timestamp, a body of the wrong size); the connector decides what to
emit. Everything is read through slixmpp's stanza interfaces (ElementTree underneath).
"""

from __future__ import annotations

import hashlib
import mimetypes
import posixpath
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote, urlparse

from slixmpp import JID
from slixmpp.jid import InvalidJID
from slixmpp.stanza import Message
from slixmpp.xmlstream import StanzaBase

from bridge.connector import Attachment, MessageContent, MessageKind
from bridge.connector.events import now_ms

from .styling import styling_to_html

NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_MAM = "urn:xmpp:mam:2"
NS_REPLY = "urn:xmpp:reply:0"
NS_RETRACT = "urn:xmpp:message-retract:1"
NS_RETRACT_0 = "urn:xmpp:message-retract:0"
NS_FASTEN = "urn:xmpp:fasten:0"
NS_MODERATE_0 = "urn:xmpp:message-moderate:0"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
TRUNCATED_NOTE = " […] (message truncated by the bridge)"


def safe_jid(value: object) -> JID | None:
    try:
        jid = JID(str(value)) if not isinstance(value, JID) else value
    except InvalidJID:
        return None
    return jid if jid.domain else None


def stanza_jid(stanza: StanzaBase, attr: str) -> JID | None:
    """The ``from``/``to`` of a stanza, or None when it is missing or not a JID."""
    raw = stanza.xml.attrib.get(attr)
    if not raw:
        return None
    return safe_jid(raw)


@dataclass(slots=True)
class Ids:
    attr: str | None  # the stanza's id attribute
    origin: str | None  # XEP-0359 origin-id
    stanza: str | None  # XEP-0359 stanza-id assigned by ``by`` (trusted entity only)

    def canonical(self) -> str | None:
        return self.stanza or self.origin or self.attr


def _child(stanza: Message, tag: str) -> object | None:
    return stanza.xml.find(tag)


def message_ids(msg: Message, trusted_by: str | None) -> Ids:
    """Ids of a message. A stanza-id counts only when ``by`` is ``trusted_by`` (the MUC for
    groupchat; the receiving account for c2s), as XEP-0359 requires."""
    attr = msg.xml.attrib.get("id") or None
    origin = None
    el = msg.xml.find("{urn:xmpp:sid:0}origin-id")
    if el is not None:
        origin = el.attrib.get("id") or None
    stanza_id = None
    if trusted_by:
        for el in msg.xml.findall("{urn:xmpp:sid:0}stanza-id"):
            by = safe_jid(el.attrib.get("by", ""))
            if by is not None and by.bare == trusted_by and el.attrib.get("id"):
                stanza_id = el.attrib["id"]
                break
    return Ids(attr=_limit_id(attr), origin=_limit_id(origin), stanza=_limit_id(stanza_id))


def _limit_id(value: str | None) -> str | None:
    if value is None or len(value) > 512:
        return None
    return value


def synthesized_id(sender: str, body: str, stamp: int) -> str:
    """An id for a message that carries none (stable for retries of the same stanza)."""
    digest = hashlib.sha256(f"{sender}\0{stamp}\0{body}".encode()).hexdigest()[:24]
    return f"x-{digest}"


def timestamp(msg: Message) -> int:
    """XEP-0203 delay stamp in ms, else now."""
    el = msg.xml.find("{urn:xmpp:delay}delay")
    if el is not None:
        stamp = el.attrib.get("stamp", "")
        try:
            return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)
        except (ValueError, OverflowError):
            pass
    return now_ms()


def body_text(msg: Message) -> str:
    body = msg["body"]
    if body:
        return str(body)
    # Forwarded stanzas (MAM results, carbons) keep the jabber:client namespace inside a
    # component stream.
    for ns in ("jabber:client", "jabber:component:accept"):
        el = msg.xml.find(f"{{{ns}}}body")
        if el is not None:
            return el.text or ""
    return ""


def _fallback_ranges(msg: Message, for_ns: str) -> list[tuple[int, int]] | None:
    """XEP-0428 fallback ranges of the body for a namespace; [] = whole body; None: none."""
    found: list[tuple[int, int]] | None = None
    for fb in msg.xml.findall("{urn:xmpp:fallback:0}fallback"):
        if fb.attrib.get("for") != for_ns:
            continue
        found = found or []
        bodies = fb.findall("{urn:xmpp:fallback:0}body")
        if not bodies:
            return []
        for b in bodies:
            try:
                start, end = int(b.attrib.get("start", "0")), int(b.attrib.get("end", "0"))
            except ValueError:
                continue
            found.append((start, end))
    return found


def strip_fallback(body: str, msg: Message, for_ns: str) -> str:
    ranges = _fallback_ranges(msg, for_ns)
    if ranges is None:
        return body
    if not ranges:
        return ""
    # Code point offsets; remove from the end so earlier offsets stay valid.
    for start, end in sorted(ranges, reverse=True):
        if 0 <= start < end <= len(body):
            body = body[:start] + body[end:]
    return body


def _attachment_for(url: str, desc: str | None) -> Attachment | None:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        return None
    filename = posixpath.basename(unquote(parsed.path)) or "file"
    mimetype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    return Attachment(filename=desc or filename, mimetype=mimetype, url=url)


def message_content(msg: Message, max_bytes: int) -> MessageContent | None:
    """The content of a message with a body or OOB media; None when it carries neither."""
    raw = body_text(msg)
    body = strip_fallback(raw, msg, NS_REPLY)
    attachments: list[Attachment] = []
    for x in msg.xml.findall("{jabber:x:oob}x"):
        url_el = x.find("{jabber:x:oob}url")
        if url_el is None or not url_el.text:
            continue
        desc_el = x.find("{jabber:x:oob}desc")
        att = _attachment_for(url_el.text.strip(), desc_el.text if desc_el is not None else None)
        if att is not None:
            attachments.append(att)
    if attachments and body.strip() in {a.url for a in attachments}:
        # The usual OOB form: the body is the link itself.
        body = ""
    if not body and not attachments:
        return None
    kind = MessageKind.TEXT
    if body.startswith("/me "):
        kind = MessageKind.EMOTE
        body = body[4:]
    encoded = body.encode()
    if len(encoded) > max_bytes:
        keep = max_bytes - len(TRUNCATED_NOTE.encode())
        body = encoded[:keep].decode("utf-8", errors="ignore") + TRUNCATED_NOTE
    html = styling_to_html(body) if body else None
    return MessageContent(text=body, html=html, kind=kind, attachments=attachments)


def is_oversized(msg: Message, max_bytes: int) -> bool:
    return len(body_text(msg).encode()) > max_bytes


def chat_state(msg: Message) -> str | None:
    for state in ("active", "composing", "paused", "inactive", "gone"):
        if msg.xml.find(f"{{{NS_CHATSTATES}}}{state}") is not None:
            return state
    return None


def correction_target(msg: Message) -> str | None:
    el = msg.xml.find("{urn:xmpp:message-correct:0}replace")
    if el is None:
        return None
    return _limit_id(el.attrib.get("id") or None)


@dataclass(slots=True)
class Retraction:
    target: str
    moderated_by: str | None = None
    reason: str | None = None


def retraction(msg: Message) -> Retraction | None:
    """XEP-0424 v1 (``<retract id=…>``), the older fastening form, and XEP-0425
    moderation (``<retract><moderated/></retract>``) in both versions."""
    el = msg.xml.find(f"{{{NS_RETRACT}}}retract")
    if el is not None and el.attrib.get("id"):
        mod = el.find("{urn:xmpp:message-moderate:1}moderated")
        reason_el = el.find(f"{{{NS_RETRACT}}}reason")
        return Retraction(
            target=el.attrib["id"],
            moderated_by=(mod.attrib.get("by") or "") if mod is not None else None,
            reason=reason_el.text if reason_el is not None else None,
        )
    apply_to = msg.xml.find(f"{{{NS_FASTEN}}}apply-to")
    if apply_to is not None and apply_to.attrib.get("id"):
        if apply_to.find(f"{{{NS_RETRACT_0}}}retract") is not None:
            return Retraction(target=apply_to.attrib["id"])
        mod = apply_to.find(f"{{{NS_MODERATE_0}}}moderated")
        if mod is not None and mod.find(f"{{{NS_RETRACT_0}}}retract") is not None:
            reason_el = mod.find(f"{{{NS_MODERATE_0}}}reason")
            return Retraction(
                target=apply_to.attrib["id"],
                moderated_by=mod.attrib.get("by") or "",
                reason=reason_el.text if reason_el is not None else None,
            )
    return None


def reactions(msg: Message) -> tuple[str, frozenset[str]] | None:
    el = msg.xml.find("{urn:xmpp:reactions:0}reactions")
    if el is None or not el.attrib.get("id"):
        return None
    keys = set()
    for r in el.findall("{urn:xmpp:reactions:0}reaction"):
        text = (r.text or "").strip()
        if text and len(text) <= 64:
            keys.add(text)
    return el.attrib["id"], frozenset(keys)


def reply_target(msg: Message) -> tuple[str, str | None] | None:
    el = msg.xml.find(f"{{{NS_REPLY}}}reply")
    if el is None or not el.attrib.get("id"):
        return None
    return el.attrib["id"], el.attrib.get("to")


def displayed_marker(msg: Message) -> str | None:
    el = msg.xml.find("{urn:xmpp:chat-markers:0}displayed")
    if el is None:
        return None
    return el.attrib.get("id") or None


def receipt_request(msg: Message) -> bool:
    return msg.xml.find("{urn:xmpp:receipts}request") is not None


def subject(msg: Message) -> str | None:
    for child in msg.xml:
        if child.tag.endswith("}subject") or child.tag == "subject":
            return child.text or ""
    return None


def is_mam_result(msg: Message) -> bool:
    return msg.xml.find(f"{{{NS_MAM}}}result") is not None


def error_text(stanza: StanzaBase) -> tuple[str, str]:
    """(condition, text) of an error stanza. On the component stream the error is in the
    ``jabber:component:accept`` namespace; slixmpp's own ``stanza["error"]`` only knows
    ``jabber:client`` and adds an empty one answering "feature-not-implemented" (which
    ``IqError`` does), so the component's namespace is read first."""
    err = stanza.xml.find("{jabber:component:accept}error")
    if err is None:
        err = stanza.xml.find("{jabber:client}error")
    if err is None:
        return "undefined-condition", ""
    condition, text = "undefined-condition", ""
    for child in err:
        tag = child.tag.split("}", 1)[-1]
        if tag == "text":
            text = child.text or ""
        elif child.tag.startswith("{urn:ietf:params:xml:ns:xmpp-stanzas}"):
            condition = tag
    return condition, text


def nick_from_message(msg: Message) -> str | None:
    el = msg.xml.find("{http://jabber.org/protocol/nick}nick")
    if el is not None and el.text:
        return el.text.strip()[:64] or None
    return None
