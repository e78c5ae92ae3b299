"""Fixtures for the XMPP connector: a real Prosody (tests/harness/prosody.py), a fake
BridgeAPI that records what the connector emits, and real slixmpp clients."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from slixmpp import ClientXMPP
from slixmpp.stanza import Message
from slixmpp.xmlstream import ET

from bridge.connector import (
    Attachment,
    ConnectionChange,
    Login,
    MatrixUser,
    PortalKey,
    RemoteEvent,
)
from connectors.xmpp import XMPPConnector
from tests.harness.prosody import ProsodyServer, start_prosody

COMPONENT = "matrix.localhost"
SECRET = "component-secret-for-tests"
NS_FASTEN = "urn:xmpp:fasten:0"
NS_MODERATE_0 = "urn:xmpp:message-moderate:0"
NS_RETRACT_0 = "urn:xmpp:message-retract:0"
_counter = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}{next(_counter)}x{id(object()) % 10000}"


@dataclass
class FakeBridge:
    """Records events and notifications; answers the connector's questions from dicts."""

    domain: str = "example.org"
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("test.bridge"))
    events: list[RemoteEvent] = field(default_factory=list)
    notices: list[tuple[str, str, PortalKey | None]] = field(default_factory=list)
    users: dict[str, MatrixUser] = field(default_factory=dict)
    portal_list: list[PortalKey] = field(default_factory=list)
    members: dict[PortalKey, list[MatrixUser]] = field(default_factory=dict)
    login_list: list[Login] = field(default_factory=list)
    connection_changes: list[ConnectionChange] = field(default_factory=list)
    uploads: list[str] = field(default_factory=list)
    db: Any = None  # a database from bridge.db.open_database, for the connector's tables
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def user(self, user_id: str, name: str, permission: str = "user") -> MatrixUser:
        u = MatrixUser(user_id, name, permission)
        self.users[user_id] = u
        return u

    async def emit(self, event: RemoteEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def notify(self, user_id: str, text: str, portal: PortalKey | None = None) -> None:
        self.notices.append((user_id, text, portal))
        self._changed.set()

    def connection_changed(self, change: ConnectionChange) -> None:
        self.connection_changes.append(change)
        self._changed.set()

    async def matrix_user(self, user_id: str) -> MatrixUser:
        if user_id not in self.users:
            raise KeyError(user_id)
        return self.users[user_id]

    async def matrix_avatar(self, user_id: str) -> Attachment | None:
        return None  # the users of these tests have no avatar

    async def portals(self, network: str) -> list[PortalKey]:
        return list(self.portal_list)

    async def portal_members(self, portal: PortalKey) -> list[MatrixUser]:
        return list(self.members.get(portal, []))

    async def logins(self, network: str) -> list[Login]:
        return list(self.login_list)

    def database(self) -> Any:
        return self.db

    def ghost_user_id(self, network: str, remote_id: str) -> str:
        from bridge.connector import escape_localpart

        return f"@xmpp_{escape_localpart(remote_id)}:{self.domain}"

    def mxc_to_url(self, mxc: str) -> str:
        return "https://media.example.org/" + mxc.removeprefix("mxc://")

    async def upload_text(self, text: str, filename: str) -> str:
        self.uploads.append(text)
        return f"https://media.example.org/text/{len(self.uploads)}"

    async def wait_for(
        self,
        pred: Callable[[RemoteEvent], bool],
        timeout: float = 10.0,  # noqa: ASYNC109
        start: int = 0,
    ) -> RemoteEvent:
        deadline = asyncio.get_running_loop().time() + timeout
        seen = start
        while True:
            for ev in self.events[seen:]:
                if pred(ev):
                    return ev
            seen = len(self.events)
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(
                    f"no matching event within {timeout} s; got {self.events[start:]!r}"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_notice(self, pred: Callable[[str], bool], timeout: float = 10.0) -> str:  # noqa: ASYNC109
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for _u, text, _p in self.notices:
                if pred(text):
                    return text
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"no matching notice; got {self.notices!r}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass


class XClient:
    """A real XMPP user on the test server."""

    def __init__(
        self,
        server: ProsodyServer,
        name: str,
        password: str = "pw",
        plugins: tuple[str, ...] = (),
    ) -> None:
        self.server = server
        self.jid = f"{name}@{server.domain}"
        self.password = password
        self.xmpp = ClientXMPP(
            f"{self.jid}/test",
            password,
            plugin_config={"feature_mechanisms": {"unencrypted_scram": True}},
        )
        self.xmpp.enable_plaintext = True
        self.xmpp.enable_starttls = False
        self.xmpp.enable_direct_tls = False
        for p in (
            "xep_0030",
            "xep_0045",
            "xep_0085",
            "xep_0199",
            "xep_0308",
            "xep_0333",
            "xep_0359",
            "xep_0424",
            "xep_0428",
            "xep_0444",
            "xep_0461",
            "xep_0066",
            "xep_0203",
            "xep_0054",
            *plugins,
        ):
            self.xmpp.register_plugin(p)
        self.xmpp.register_plugin("xep_0184", {"auto_ack": False, "auto_request": False})
        self.messages: list[Message] = []
        self.presences: list[Any] = []
        self._changed = asyncio.Event()
        from slixmpp.xmlstream.handler import Callback
        from slixmpp.xmlstream.matcher import MatchXPath

        self.xmpp.register_handler(
            Callback("all messages", MatchXPath("{jabber:client}message"), self._on_message)
        )
        self.xmpp.register_handler(
            Callback("all presences", MatchXPath("{jabber:client}presence"), self._on_presence)
        )

    def _on_message(self, msg: Message) -> None:
        self.messages.append(msg)
        self._changed.set()

    def _on_presence(self, pres: Any) -> None:
        self.presences.append(pres)
        self._changed.set()

    async def connect(self) -> XClient:
        self.server.register_user(self.jid.split("@")[0], self.password)
        started = asyncio.get_running_loop().create_future()
        self.xmpp.add_event_handler(
            "session_start", lambda _e: started.done() or started.set_result(True)
        )
        self.xmpp.connect(self.server.host, self.server.c2s_port)
        await asyncio.wait_for(started, 10)
        self.xmpp.send_presence()
        return self

    async def join(self, room: str, nick: str) -> Any:
        return await self.xmpp.plugin["xep_0045"].join_muc_wait(
            room, nick, maxstanzas=0, timeout=10
        )

    async def moderate(self, room: str, stanza_id: str, reason: str | None = None) -> None:
        """Retract someone's message as a moderator (XEP-0425), in the form the test
        server's mod_muc_moderation speaks (``urn:xmpp:message-moderate:0``, a XEP-0422
        fastening; slixmpp's xep_0425 plugin sends only the newer ``:1`` form)."""
        iq = self.xmpp.make_iq_set(ito=room)
        apply_to = ET.SubElement(iq.xml, f"{{{NS_FASTEN}}}apply-to", {"id": stanza_id})
        mod = ET.SubElement(apply_to, f"{{{NS_MODERATE_0}}}moderate")
        ET.SubElement(mod, f"{{{NS_RETRACT_0}}}retract")
        if reason:
            ET.SubElement(mod, f"{{{NS_MODERATE_0}}}reason").text = reason
        await iq.send(timeout=10)

    async def wait_message(self, pred: Callable[[Message], bool], timeout: float = 10.0) -> Message:  # noqa: ASYNC109
        deadline = asyncio.get_running_loop().time() + timeout
        seen = 0
        while True:
            for m in self.messages[seen:]:
                if pred(m):
                    return m
            seen = len(self.messages)
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.jid}: no matching message; got {[str(m) for m in self.messages]}"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_presence(self, pred: Callable[[Any], bool], timeout: float = 10.0) -> Any:  # noqa: ASYNC109
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for p in self.presences:
                if pred(p):
                    return p
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"{self.jid}: no matching presence")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.xmpp.disconnect(wait=0.5), 3)
        except Exception:
            pass


@dataclass
class Moderated:
    target: str  # the stanza-id of the retracted message
    by: str  # the moderator's occupant JID
    reason: str | None


def moderated(msg: Message) -> Moderated | None:
    """A room's announcement of a moderation (XEP-0425, ``:0`` form), as a client reads it."""
    apply_to = msg.xml.find(f"{{{NS_FASTEN}}}apply-to")
    if apply_to is None:
        return None
    mod = apply_to.find(f"{{{NS_MODERATE_0}}}moderated")
    if mod is None or mod.find(f"{{{NS_RETRACT_0}}}retract") is None:
        return None
    return Moderated(
        apply_to.get("id", ""), mod.get("by", ""), mod.findtext(f"{{{NS_MODERATE_0}}}reason")
    )


@pytest.fixture(scope="session", params=["plain", "fanout"])
def prosody(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProsodyServer]:
    """Every XMPP test runs against a plain Prosody and against one whose MUC trims the
    bridge's fan-out (contrib/prosody/mod_muc_bridge_fanout.lua): the bridge must behave the
    same with both."""
    server = start_prosody(
        tmp_path_factory.mktemp("prosody"),
        COMPONENT,
        SECRET,
        bridge_fanout=request.param == "fanout",
    )
    yield server
    server.stop()


def connector_config(server: ProsodyServer, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "server": {"host": server.host, "port": server.component_port},
        "component": {"domain": COMPONENT, "secret": SECRET},
        "muc_services": [server.muc_domain],
        "send_timeout": 5,
        "outage_grace": 1,
        "reconnect": {"min_delay": 0.2, "max_delay": 1},
        "self_ping_interval": 3600,
        "logins": {
            "enabled": True,
            "host": server.host,
            "port": server.c2s_port,
            "allow_plaintext": True,
        },
    }
    cfg.update(extra)
    return cfg


@pytest.fixture
async def bridge() -> FakeBridge:
    return FakeBridge()


@pytest.fixture
async def connector(prosody: ProsodyServer, bridge: FakeBridge) -> AsyncIterator[XMPPConnector]:
    if not prosody.running:
        prosody.start()
    conn = XMPPConnector(bridge, connector_config(prosody))
    await conn.start()
    assert await conn.component.wait_ready(10)
    yield conn
    await conn.stop()


@pytest.fixture
async def xclients(prosody: ProsodyServer) -> AsyncIterator[Callable[[str], Any]]:
    made: list[XClient] = []

    async def make(prefix: str, plugins: tuple[str, ...] = ()) -> XClient:
        c = await XClient(prosody, unique(prefix), plugins=plugins).connect()
        made.append(c)
        return c

    yield make
    for c in made:
        await c.close()
