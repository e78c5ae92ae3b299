"""MUC history for new portals: the room's archive (XEP-0313 MAM) read back as remote
messages."""

from __future__ import annotations

from typing import TYPE_CHECKING

from slixmpp import JID
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.stanza import Message
from slixmpp.xmlstream.handler import Collector
from slixmpp.xmlstream.matcher import MatchXPath

from bridge.connector import (
    PortalKey,
    RemoteMessage,
    Sender,
)

from . import matrix_to_xmpp as out
from . import xmpp_to_matrix as inc
from .identity import conv_of
from .idmap import MessageRecord
from .jid_mapping import InvalidMapping, parse_room_jid
from .part import Part

if TYPE_CHECKING:
    pass


class History(Part):
    """Reads a MUC's archive."""

    async def fetch_history(self, portal: PortalKey, limit: int) -> list[RemoteMessage]:
        if portal.receiver or limit <= 0:
            return []
        room_jid = parse_room_jid(portal.remote_id)
        if room_jid is None or not await self.c.component.wait_ready(self.cfg.outage_grace):
            return []
        xmpp = self.c.component_xmpp
        iq = xmpp.make_iq_set(ito=room_jid, ifrom=JID(self.cfg.domain))
        query_id = out.new_id()
        iq["mam"]["queryid"] = query_id
        iq["mam"]["rsm"]["max"] = str(min(limit, 500))
        iq["mam"]["rsm"]["before"] = True
        collector = Collector(
            f"MAM_{query_id}",
            MatchXPath(f"{{{xmpp.default_ns}}}message/{{urn:xmpp:mam:2}}result"),
        )
        xmpp.register_handler(collector)
        try:
            await iq.send(timeout=15)
        except (IqError, IqTimeout) as e:
            self.log.info("no MAM history from %s: %s", room_jid, e)
            collector.stop()
            return []
        results = collector.stop()
        room = self.c.room_for(room_jid)
        conv = conv_of(portal)
        messages: list[RemoteMessage] = []
        by_origin: dict[str, RemoteMessage] = {}
        for wrapper in results:
            try:
                result = wrapper.xml.find("{urn:xmpp:mam:2}result")
                if result is None or result.attrib.get("queryid") != query_id:
                    continue
                archive_id = result.attrib.get("id")
                fwd = result.find("{urn:xmpp:forward:0}forwarded")
                if fwd is None or not archive_id:
                    continue
                inner_xml = None
                for child in fwd:
                    if child.tag.endswith("}message"):
                        inner_xml = child
                stamp_el = fwd.find("{urn:xmpp:delay}delay")
                if inner_xml is None:
                    continue
                inner = Message(xmpp, inner_xml)
                if stamp_el is not None:
                    inner.xml.append(stamp_el)
                frm = inc.stanza_jid(inner, "from")
                if frm is None or not frm.resource:
                    continue
                content = inc.message_content(inner, self.cfg.max_message_bytes)
                if content is None:
                    continue
                ids = inc.message_ids(inner, room_jid.bare)
                real = self._muc_item_from_message(inner)
                real_jid = inc.safe_jid(real) if real else None
                if real_jid is not None and real_jid.domain == self.cfg.domain:
                    try:
                        mx = self.c.mapper.matrix_user(real_jid)
                    except InvalidMapping:
                        continue
                    sender = Sender(real_jid.bare, frm.resource, is_from_me=True, matrix_user=mx)
                else:
                    sender = Sender(
                        self.c.presence_in.ghost_for(room, frm.resource, real), frm.resource
                    )
                origin = ids.origin or ids.attr
                corrected = inc.correction_target(inner)
                if corrected and corrected in by_origin:
                    by_origin[corrected].content = content
                    continue
                rec = MessageRecord(conv, archive_id, archive_id, origin, sender.remote_id)
                await self.c.ids.add(rec)
                message = RemoteMessage(
                    portal=portal,
                    sender=sender,
                    id=archive_id,
                    content=content,
                    timestamp=inc.timestamp(inner),
                )
                reply = inc.reply_target(inner)
                if reply is not None:
                    message.reply_to = await self.c.ids.canonical(conv, reply[0])
                await self.c.media.fill(content.attachments)
                messages.append(message)
                if origin:
                    by_origin[origin] = message
            except Exception:
                self.log.exception("skipping a malformed archived message")
        return messages[-limit:]

    def _muc_item_from_message(self, msg: Message) -> str | None:
        x = msg.xml.find(f"{{{inc.NS_MUC_USER}}}x")
        if x is None:
            return None
        item = x.find(f"{{{inc.NS_MUC_USER}}}item")
        return item.attrib.get("jid") if item is not None else None
