"""The connector kit's standard scenarios against the XMPP connector and a real Prosody. The
remote user is a slixmpp client in each scenario's MUC; message ids are read as the MUC's
stanza-ids (what reactions, retractions and replies name in a groupchat), corrections'
origin ids mapped to them."""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from slixmpp import JID

from bridge.testing import ConnectorScenarios, Kit
from tests.harness.prosody import ProsodyServer, start_prosody
from tests.xmpp.conftest import COMPONENT, SECRET, XClient, connector_config

_n = itertools.count(1)
NS_SID = "{urn:xmpp:sid:0}stanza-id"
NS_REACTIONS = "{urn:xmpp:reactions:0}reactions"
NS_RETRACT = "{urn:xmpp:message-retract:1}retract"
NS_REPLY = "{urn:xmpp:reply:0}reply"
NS_REPLACE = "{urn:xmpp:message-correct:0}replace"
NS_DISPLAYED = "{urn:xmpp:chat-markers:0}displayed"
NS_CHAT_STATES = "http://jabber.org/protocol/chatstates"


def _sid(msg: Any) -> str | None:
    el = msg.xml.find(NS_SID)
    return None if el is None else str(el.attrib["id"])


class XmppDriver:
    connector = "xmpp"
    network = "xmpp"
    prefix = "xmpp_"
    capabilities = frozenset(
        {
            "formatting",
            "replies",
            "edits",
            "reactions",
            "redactions",
            "remote_edits",
            "remote_reactions",
            "remote_redactions",
            "remote_large_messages",
            "membership",
            "typing",
            "receipts",
            "remote_typing",
            "remote_receipts",
        }
    )

    def __init__(self, server: ProsodyServer) -> None:
        self.server = server
        self.alice: XClient | None = None
        self.origin_of: dict[str, str] = {}  # stanza-id -> the sender's own message id

    def room_for(self, tag: str) -> str:
        return f"kit{tag}@{self.server.muc_domain}"

    def config(self, workdir: Path) -> Mapping[str, Any]:
        return connector_config(self.server)

    async def start(self, kit: Kit) -> None:
        self.alice = await XClient(self.server, f"alice{next(_n)}").connect()
        await self.alice.join(kit.room, "alice")

    async def stop(self) -> None:
        if self.alice is not None:
            await self.alice.close()
            self.alice = None

    async def prepare_room(self, kit: Kit) -> None:
        pass

    async def portal_ready(self, kit: Kit, room_id: str) -> None:
        pass

    def _bridge_present(self, room: str) -> bool:
        """Some occupant other than alice is in the room by its latest presence (a bridge
        restart makes the occupants leave and come back)."""
        latest: dict[str, bool] = {}
        for p in self._a().presences:
            who = str(p["from"])
            if who.startswith(room + "/") and who != f"{room}/alice":
                latest[who] = p["type"] != "unavailable"
        return any(latest.values())

    def _a(self) -> XClient:
        assert self.alice is not None
        return self.alice

    async def remote_message(
        self, kit: Kit, text: str, html: str | None = None, reply_to: str | None = None
    ) -> str | None:
        alice = self._a()
        # A MUC keeps no history for occupants to come: speak once the bridge is in the room.
        await kit.until_true(
            lambda: self._bridge_present(kit.room), "the bridge's occupant in the MUC"
        )
        msg = alice.xmpp.make_message(mto=JID(kit.room), mbody=text, mtype="groupchat")
        oid = msg["id"] = msg["origin_id"]["id"] = uuid.uuid4().hex
        msg.send()
        seen = await alice.wait_message(lambda m: m["id"] == oid and _sid(m) is not None, 20)
        sid = _sid(seen)
        assert sid is not None
        self.origin_of[sid] = oid
        return sid

    async def remote_edit(self, kit: Kit, target: str, text: str) -> None:
        fix = self._a().xmpp.make_message(mto=JID(kit.room), mbody=text, mtype="groupchat")
        fix["replace"]["id"] = self.origin_of.get(target, target)
        fix.send()

    async def remote_reaction(self, kit: Kit, target: str, key: str) -> None:
        react = self._a().xmpp.make_message(mto=JID(kit.room), mtype="groupchat")
        react["reactions"]["id"] = target
        react["reactions"]["values"] = [key]
        react.send()

    async def remote_redaction(self, kit: Kit, target: str) -> None:
        rt = self._a().xmpp.make_message(mto=JID(kit.room), mtype="groupchat", mbody="retracted")
        rt["retract"]["id"] = target
        rt.send()

    async def own_identity(self, kit: Kit) -> None:
        pass  # every Matrix user in a portal is an occupant of the MUC of their own

    async def remote_typing(self, kit: Kit, typing: bool) -> None:
        state = self._a().xmpp.make_message(mto=JID(kit.room), mtype="groupchat")
        state["chat_state"] = "composing" if typing else "paused"
        state.send()

    async def remote_receipt(self, kit: Kit, target: str) -> None:
        mark = self._a().xmpp.make_message(mto=JID(kit.room), mtype="groupchat")
        mark["displayed"]["id"] = target
        mark.send()

    async def remote_image(self, kit: Kit, data: bytes, filename: str) -> str | None:
        raise NotImplementedError("not declared: remote_media")

    def received(self, kit: Kit) -> list[dict[str, Any]]:
        if self.alice is None:
            return []
        mine = f"{kit.room}/alice"
        msgs = [
            m
            for m in self.alice.messages
            if m["type"] == "groupchat"
            and str(m["from"]).startswith(kit.room + "/")
            and str(m["from"]) != mine
        ]
        sid_of = {m["id"]: _sid(m) for m in msgs if _sid(m)}

        def norm(ident: str) -> str:
            return sid_of.get(ident) or ident

        out: list[dict[str, Any]] = []
        for p in self.alice.presences:
            who = str(p["from"])
            if who.startswith(kit.room + "/") and who != mine:
                kind = "leave" if p["type"] == "unavailable" else "join"
                out.append({"kind": "membership", "membership": kind, "who": who.split("/", 1)[1]})
        for m in msgs:
            displayed = m.xml.find(NS_DISPLAYED)
            if displayed is not None:
                out.append({"kind": "receipt", "target": norm(displayed.attrib.get("id", ""))})
            state = next((c for c in m.xml if c.tag.startswith(f"{{{NS_CHAT_STATES}}}")), None)
            if state is not None and not m["body"]:
                name = state.tag.split("}", 1)[1]
                if name in ("composing", "paused", "active"):
                    out.append({"kind": "typing", "typing": name == "composing"})
            reactions, retract = m.xml.find(NS_REACTIONS), m.xml.find(NS_RETRACT)
            replace, reply = m.xml.find(NS_REPLACE), m.xml.find(NS_REPLY)
            if reactions is not None:
                keys = sorted(m["reactions"].get_values(all_chars=True))
                target = norm(reactions.attrib.get("id", ""))
                out.append({"kind": "reaction", "target": target, "key": keys[0] if keys else ""})
            elif retract is not None:
                out.append({"kind": "redaction", "target": norm(retract.attrib.get("id", ""))})
            elif replace is not None:
                target = norm(replace.attrib.get("id", ""))
                out.append({"kind": "edit", "target": target, "text": m["body"]})
            elif m["body"]:
                styled = re.sub(r"\*(\S[^*\n]*?)\*", r"<strong>\1</strong>", m["body"])
                out.append(
                    {
                        "kind": "message",
                        "id": _sid(m) or m["id"],
                        "text": m["body"],
                        "html": styled if styled != m["body"] else None,
                        "reply_to": reply.attrib.get("id") if reply is not None else None,
                        "relayed": False,
                    }
                )
        return out


@pytest.fixture(scope="module")
def mimi_driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppDriver]:
    server = start_prosody(tmp_path_factory.mktemp("kit-prosody"), COMPONENT, SECRET)
    yield XmppDriver(server)
    server.stop()


class TestXmpp(ConnectorScenarios, driver=XmppDriver):
    pass
