"""The XMPP connector: one XEP-0114 component puppets every Matrix user; Matrix users who log
in with their own account (``login xmpp <jid> <password>``) speak through their own c2s
session instead.

Portals: a MUC ``room@service`` is ``PortalKey("xmpp", "room@service")`` (alias
``#xmpp_room@service:<hs>``); a DM is ``PortalKey("xmpp", <bare jid>, receiver=<Matrix user
id>)``; a private message with a MUC occupant is a DM keyed by the occupant JID
``room@service/nick``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from slixmpp import JID
from slixmpp.basexmpp import BaseXMPP
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.plugins.xep_0030.stanza import DiscoInfo
from slixmpp.stanza import Message, Presence
from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import Callback, Collector
from slixmpp.xmlstream.matcher import MatchXPath

from bridge.connector import (
    Attachment,
    BridgeAPI,
    ChatInfo,
    ChatMember,
    ConfigError,
    ConnectorError,
    GhostInfo,
    Login,
    LoginResult,
    MatrixEdit,
    MatrixMembership,
    MatrixMessage,
    MatrixProfile,
    MatrixReaction,
    MatrixReactionRemove,
    MatrixReceipt,
    MatrixRedaction,
    MatrixRoomMeta,
    MatrixTyping,
    MatrixUser,
    Membership,
    Namespace,
    NetworkClient,
    NetworkConnector,
    NotSupported,
    PortalKey,
    RemoteChatInfo,
    RemoteEdit,
    RemoteEvent,
    RemoteMembership,
    RemoteMessage,
    RemotePresence,
    RemoteProfile,
    RemoteReaction,
    RemoteReactionRemove,
    RemoteReceipt,
    RemoteRedaction,
    RemoteTyping,
    Sender,
    SentMessage,
    escape_localpart,
    unescape_localpart,
)
from bridge.connector.ids import InvalidEscape

from . import avatars as avmod
from . import matrix_to_xmpp as out
from . import muc as mucmod
from . import xmpp_to_matrix as inc
from .avatars import AvatarStore
from .component import (
    DROP,
    KEEP,
    KEEP_IF_SELF,
    NotConnected,
    SerialInbox,
    Stream,
    make_client,
    make_component,
)
from .config import XMPPConfig, parse_config
from .idmap import IdStore, MessageRecord
from .jid_mapping import InvalidMapping, JidMapper, parse_remote_user, parse_room_jid
from .media import MediaFetcher
from .muc import MucRoom, Occupant, RemoteOccupant

NETWORK = "xmpp"
NS_MUC = "http://jabber.org/protocol/muc"
CAPS_NODE = "https://github.com/mimi-bridge/mimi-bridge"
FEATURES = [
    "http://jabber.org/protocol/disco#info",
    "http://jabber.org/protocol/caps",
    "http://jabber.org/protocol/chatstates",
    "http://jabber.org/protocol/muc",
    "jabber:x:oob",
    "urn:xmpp:chat-markers:0",
    "urn:xmpp:message-correct:0",
    "urn:xmpp:message-retract:1",
    "urn:xmpp:ping",
    "urn:xmpp:reactions:0",
    "urn:xmpp:receipts",
    "urn:xmpp:reply:0",
    "urn:xmpp:sid:0",
    "urn:xmpp:styling:0",
    "vcard-temp",
]
PUPPET_IDENTITY = ("client", "pc", "Matrix user")
COMPONENT_IDENTITY = ("gateway", "matrix", "Matrix bridge")
SHOW_FOR = {"online": None, "unavailable": "away"}
PRESENCE_FOR_SHOW = {
    None: "online",
    "": "online",
    "chat": "online",
    "away": "unavailable",
    "xa": "unavailable",
    "dnd": "unavailable",
}


def caps_ver(identities: list[tuple[str, str, str]], features: list[str]) -> str:
    """XEP-0115 §5.1 verification string (no extended forms)."""
    s = "".join(f"{c}/{t}//{n}<" for c, t, n in sorted(identities))
    s += "".join(f"{f}<" for f in sorted(features))
    return base64.b64encode(hashlib.sha1(s.encode()).digest()).decode()


def conv_of(portal: PortalKey) -> str:
    return f"{portal.remote_id}|{portal.receiver}" if portal.receiver else portal.remote_id


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


def _summary(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."


class XMPPClient(NetworkClient):
    """Speaks for one Matrix user (puppet or own login) in XMPP conversations."""

    def __init__(self, connector: XMPPConnector, identity: Identity, display_name: str) -> None:
        self.connector = connector
        self.identity = identity
        self.display_name = display_name

    async def handle_matrix_message(self, msg: MatrixMessage) -> SentMessage:
        return await self.connector.send_message(self.identity, msg)

    async def handle_matrix_edit(self, edit: MatrixEdit) -> SentMessage | None:
        return await self.connector.send_edit(self.identity, edit)

    async def handle_matrix_redaction(self, redaction: MatrixRedaction) -> None:
        await self.connector.send_redaction(self.identity, redaction)

    async def handle_matrix_reaction(self, reaction: MatrixReaction) -> SentMessage:
        return await self.connector.send_reaction(self.identity, reaction)

    async def handle_matrix_reaction_remove(self, removal: MatrixReactionRemove) -> None:
        await self.connector.send_reaction_remove(self.identity, removal)

    async def handle_matrix_typing(self, typing: MatrixTyping) -> None:
        await self.connector.send_typing(self.identity, typing)

    async def handle_matrix_receipt(self, receipt: MatrixReceipt) -> None:
        await self.connector.send_receipt(self.identity, receipt)

    async def handle_matrix_membership(self, change: MatrixMembership) -> None:
        await self.connector.handle_membership(self.identity, change)

    async def handle_matrix_room_meta(self, change: MatrixRoomMeta) -> None:
        await self.connector.send_room_meta(self.identity, change)

    async def handle_matrix_presence(self, presence: str, status: str | None) -> None:
        await self.connector.send_presence(self.identity, presence, status)

    async def handle_matrix_profile(self, change: MatrixProfile) -> None:
        await self.connector.handle_profile(self.identity, change)


class XMPPConnector(NetworkConnector):
    name = "xmpp"
    display_name = "XMPP"
    example_config = "connectors/xmpp/config.py"
    login_help = "<jid> <password> — use your own XMPP account instead of a bridge puppet"

    def __init__(self, bridge: BridgeAPI, config: Mapping[str, Any]) -> None:
        super().__init__(bridge, config)
        self.cfg: XMPPConfig = parse_config(config)
        self.mapper = JidMapper(self.cfg.domain, self.cfg.resource)
        self.ids = IdStore()
        self.avatars = AvatarStore()
        # Ghost id -> the avatar hash (XEP-0153) last set on its Matrix ghost.
        self._ghost_photos: OrderedDict[str, str] = OrderedDict()
        self.rooms: dict[str, MucRoom] = {}
        self.puppets: dict[str, Identity] = {}
        self.sessions: dict[str, LoginSession] = {}
        self.display_names: dict[str, str] = {}
        self.known_dms: set[PortalKey] = set()
        self.presence: dict[str, tuple[str | None, str | None, bool]] = {}
        self.outbox: deque[Outgoing] = deque()
        self.outage_notified: set[tuple[str, PortalKey]] = set()
        self._pending: dict[str, asyncio.Future[str | None]] = {}
        self._sent: OrderedDict[str, tuple[str, PortalKey, str]] = OrderedDict()
        # Origin-ids of groupchat messages sent and not reflected yet -> their stanza-id.
        self._echoes: OrderedDict[str, asyncio.Future[str | None]] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.inbox = SerialInbox(self.log)
        # (room, nick) of occupants the bridge kicked or banned for a Matrix user: their
        # removal comes back from the room and must not be mirrored to Matrix a second time.
        self._own_removals: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._ping_task: asyncio.Task[None] | None = None
        self._stopping = False
        self.media = MediaFetcher(
            self.cfg.media_max_bytes, self.cfg.media_allow_private, self.log.getChild("media")
        )
        self.component_xmpp = make_component(self.cfg)
        self.component = Stream(
            self.component_xmpp,
            name="component",
            host=self.cfg.host,
            port=self.cfg.port,
            min_delay=self.cfg.reconnect_min_delay,
            max_delay=self.cfg.reconnect_max_delay,
            log=self.log,
        )
        self.component_xmpp.prefilter = self._wanted
        self.component.on_ready.append(self._component_ready)
        self.component.on_lost.append(lambda: self._stream_lost(self.component))
        self._install_handlers(self.component)
        self._install_disco()
        self._install_vcard()

    # --- configuration and ids ------------------------------------------------------------

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> None:
        parse_config(config)

    def namespaces(self) -> list[Namespace]:
        return [Namespace(network=NETWORK, prefix="xmpp_", description="XMPP users and rooms")]

    def parse_ghost_localpart(self, network: str, localpart: str) -> str | None:
        try:
            remote = unescape_localpart(localpart)
        except (InvalidEscape, ValueError):
            return None
        jid = parse_remote_user(remote, self.cfg.domain)
        return str(jid) if jid is not None else None

    def alias_localpart(self, network: str, remote_room_id: str) -> str:
        node, _, domain = remote_room_id.partition("@")
        return f"{escape_localpart(node)}@{escape_localpart(domain)}"

    def parse_alias_localpart(self, network: str, localpart: str) -> str | None:
        try:
            if localpart.count("@") == 1:
                node, _, domain = localpart.partition("@")
                remote = f"{unescape_localpart(node)}@{unescape_localpart(domain)}"
            else:
                remote = unescape_localpart(localpart)
        except (InvalidEscape, ValueError):
            return None
        jid = parse_room_jid(remote)
        if jid is None or not self.cfg.muc_allowed(jid.domain):
            return None
        return str(jid)

    def puppet_jid(self, user_id: str) -> JID:
        """The JID that represents a Matrix user (see jid_mapping)."""
        return self.mapper.full_jid(user_id)

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        db = None
        with contextlib.suppress(Exception):
            db = self.bridge.database()
        self.ids = IdStore(db)
        await self.ids.setup()
        self.avatars = AvatarStore(db)
        await self.avatars.setup()
        try:
            for portal in await self.bridge.portals(NETWORK):
                if portal.receiver:
                    self.known_dms.add(portal)
                elif parse_room_jid(portal.remote_id) is not None:
                    self._room(JID(portal.remote_id))
        except Exception:
            self.log.exception("could not list portals")
        connected = await self.component.connect_once()
        if not connected:
            self.log.error(
                "could not connect the XMPP component to %s:%d (%s); retrying in the background",
                self.cfg.host,
                self.cfg.port,
                self.component.last_error,
            )
        self.component.start(first_attempt_done=connected)
        if self.cfg.logins_enabled:
            try:
                logins = await self.bridge.logins(NETWORK)
            except Exception:
                self.log.exception("could not list logins")
                logins = []
            for login in logins:
                try:
                    await self._start_session(login.user_id, login.login_id, login.credentials)
                except Exception:
                    self.log.exception("could not start the XMPP login of %s", login.user_id)
        self._ping_task = asyncio.create_task(self._self_ping_loop(), name="xmpp-self-ping")

    async def stop(self) -> None:
        self._stopping = True
        if self._ping_task:
            self._ping_task.cancel()
        for room in self.rooms.values():
            for occ in room.ours.values():
                if occ.state == "joined":
                    with contextlib.suppress(Exception):
                        occ.identity.stream.send(
                            out.leave_presence(
                                occ.identity.xmpp,
                                pfrom=occ.identity.jid,
                                occupant=occ.occupant_jid,
                                status="Bridge shutting down",
                            )
                        )
                occ.state = "left"
        await asyncio.sleep(0.05)
        for session in list(self.sessions.values()):
            await session.identity.stream.stop()
        self.sessions.clear()
        await self.component.stop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.inbox.close()
        await self.media.close()
        await self.ids.flush()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- identities -----------------------------------------------------------------------------

    def _puppet(self, user_id: str) -> Identity:
        ident = self.puppets.get(user_id)
        if ident is None:
            try:
                jid = self.mapper.full_jid(user_id)
            except InvalidMapping as e:
                raise ConnectorError(f"Your Matrix id cannot be used on XMPP: {e}") from e
            ident = Identity(user_id, self.component, jid, login=False)
            self.puppets[user_id] = ident
        return ident

    def identity_for(self, user_id: str) -> Identity:
        session = self.sessions.get(user_id)
        if session is not None:
            return session.identity
        return self._puppet(user_id)

    async def _display_name(self, user_id: str) -> str:
        name = self.display_names.get(user_id)
        if name:
            return name
        try:
            user = await self.bridge.matrix_user(user_id)
            name = user.display_name
        except Exception:
            name = None
        return name or user_id[1:].split(":", 1)[0]

    # --- portals and ghosts ---------------------------------------------------------------------

    def _room(self, jid: JID) -> MucRoom:
        room = self.rooms.get(jid.bare)
        if room is None:
            room = MucRoom(JID(jid.bare))
            self.rooms[jid.bare] = room
        return room

    async def _disco_info(self, jid: JID) -> DiscoInfo:
        iq = await self.component_xmpp.plugin["xep_0030"].get_info(
            jid=jid, ifrom=JID(self.cfg.domain), local=False, cached=False, timeout=10
        )
        return iq["disco_info"]

    async def resolve_portal(self, portal: PortalKey, user: MatrixUser | None) -> ChatInfo | None:
        if portal.receiver:
            jid = parse_remote_user(portal.remote_id, self.cfg.domain)
            if jid is None:
                return None
            return ChatInfo(name=jid.resource or jid.bare, is_direct=True, members=[str(jid)])
        room = parse_room_jid(portal.remote_id)
        if room is None or not self.cfg.muc_allowed(room.domain):
            return None
        if not await self.component.wait_ready(self.cfg.outage_grace):
            raise ConnectorError("The XMPP server is not reachable right now; try again later.")
        try:
            info = await self._disco_info(room)
        except IqError as e:
            condition = inc.error_text(e.iq)[0]
            if condition in ("item-not-found", "service-unavailable", "remote-server-not-found"):
                return None
            raise ConnectorError(f"The XMPP room could not be checked: {condition}") from e
        except IqTimeout as e:
            raise ConnectorError("The XMPP server did not answer about that room.") from e
        if NS_MUC not in info["features"]:
            return None
        name = None
        for category, _type, _lang, iname in info["identities"]:
            if category == "conference" and iname:
                name = iname
        topic = None
        form = info.xml.find("{jabber:x:data}x")
        if form is not None:
            for fld in form.findall("{jabber:x:data}field"):
                value = fld.find("{jabber:x:data}value")
                if value is None or not value.text:
                    continue
                if fld.attrib.get("var") == "muc#roominfo_subject":
                    topic = value.text
                elif fld.attrib.get("var") == "muc#roomconfig_roomname":
                    name = value.text
        self._room(room).name = name
        return ChatInfo(name=name or room.user, topic=topic, is_direct=False)

    async def resolve_ghost(self, network: str, remote_user_id: str) -> GhostInfo | None:
        jid = parse_remote_user(remote_user_id, self.cfg.domain)
        if jid is None:
            return None
        if jid.resource:
            return GhostInfo(display_name=jid.resource)
        for room in self.rooms.values():
            ro = room.remote_by_ghost(remote_user_id)
            if ro is not None:
                return GhostInfo(display_name=ro.nick)
        return GhostInfo(display_name=jid.user or jid.domain)

    async def _portal_members(self, portal: PortalKey) -> tuple[MucRoom, list[MatrixUser]] | None:
        """The MUC of a shared portal and the Matrix users in its room (DMs: remembered, None)."""
        if portal.receiver:
            self.known_dms.add(portal)
            return None
        jid = parse_room_jid(portal.remote_id)
        if jid is None:
            return None
        room = self._room(jid)
        try:
            return room, await self.bridge.portal_members(portal)
        except Exception:
            self.log.exception("could not list members of %s", portal)
            return None

    async def portal_opened(self, portal: PortalKey) -> None:
        found = await self._portal_members(portal)
        if found is None:
            return
        room, members = found
        for member in members:
            if member.permission == "relay":
                continue
            self.display_names[member.user_id] = member.display_name
            self._spawn(self._join_or_notify(room, self.identity_for(member.user_id), portal))

    async def portal_closed(self, portal: PortalKey) -> None:
        if portal.receiver:
            self.known_dms.discard(portal)
            return
        room = self.rooms.pop(portal.remote_id, None)
        if room is None:
            return
        for occ in room.ours.values():
            occ.wanted = False
            self._send_leave(occ, "Portal closed")

    async def client_for(self, user: MatrixUser, portal: PortalKey) -> NetworkClient | None:
        if user.permission == "relay" and user.user_id not in self.sessions:
            return None
        if portal.receiver and portal.receiver != user.user_id:
            return None
        self.display_names[user.user_id] = user.display_name
        return XMPPClient(self, self.identity_for(user.user_id), user.display_name)

    async def open_dm(self, user: MatrixUser, network: str, remote_user_id: str) -> PortalKey:
        jid = parse_remote_user(remote_user_id, self.cfg.domain)
        if jid is None:
            raise ConnectorError(f"{remote_user_id!r} is not an XMPP address.")
        portal = PortalKey(NETWORK, str(jid), receiver=user.user_id)
        self.known_dms.add(portal)
        return portal

    # --- login ----------------------------------------------------------------------------------

    async def login(self, user: MatrixUser, args: list[str]) -> LoginResult:
        if not self.cfg.logins_enabled:
            raise ConnectorError("Logging in with your own XMPP account is disabled here.")
        if len(args) != 2:
            raise ConnectorError(f"Usage: login xmpp {self.login_help}")
        raw_jid, password = args
        jid = inc.safe_jid(raw_jid)
        if jid is None or not jid.user:
            raise ConnectorError(f"{raw_jid!r} is not an XMPP address (user@server).")
        if jid.domain == self.cfg.domain:
            raise ConnectorError("That address belongs to the bridge itself.")
        creds = {"jid": jid.bare, "password": password}
        await self._start_session(user.user_id, jid.bare, creds, check=True)
        return LoginResult(
            login_id=jid.bare,
            credentials=dict(creds),
            remote_name=jid.bare,
            message=f"Logged in as {jid.bare}. You now speak as yourself in XMPP rooms and chats.",
        )

    async def logout(self, login: Login) -> None:
        session = self.sessions.pop(login.user_id, None)
        if session is None:
            return
        rooms = []
        for room in self.rooms.values():
            occ = room.ours.get(login.user_id)
            if occ is not None and occ.identity is session.identity:
                self._send_leave(occ, None)
                del room.ours[login.user_id]
                rooms.append(room)
        await session.identity.stream.stop()
        # The rooms the user was in get their puppet back.
        for room in rooms:
            self._spawn(self._join_or_notify(room, self._puppet(login.user_id), None))

    async def _start_session(
        self, user_id: str, login_id: str, creds: Mapping[str, Any], check: bool = False
    ) -> None:
        jid = str(creds.get("jid") or login_id)
        password = str(creds.get("password") or "")
        full = JID(jid)
        full.resource = self.cfg.resource
        xmpp = make_client(self.cfg, str(full), password)
        stream = Stream(
            xmpp,
            name=f"login {jid}",
            host=self.cfg.login_host,
            port=self.cfg.login_port,
            min_delay=self.cfg.reconnect_min_delay,
            max_delay=self.cfg.reconnect_max_delay,
            log=self.log,
        )
        ok = await stream.connect_once()
        if not ok and check:
            with contextlib.suppress(Exception):
                await stream.stop()
            raise ConnectorError(f"Could not log in as {jid}: {stream.last_error or 'no answer'}.")
        identity = Identity(user_id, stream, None, login=True)
        old = self.sessions.pop(user_id, None)
        if old is not None:
            await old.identity.stream.stop()
        self.sessions[user_id] = LoginSession(login_id, identity)
        self._install_handlers(stream)
        stream.on_ready.append(lambda: self._login_ready(identity))
        stream.on_lost.append(lambda: self._stream_lost(stream))
        # Rooms where the puppet stood in for this user now get the user's own account.
        for room in self.rooms.values():
            occ = room.ours.get(user_id)
            if occ is not None and not occ.identity.login:
                self._send_leave(occ, None)
                del room.ours[user_id]
                self._spawn(self._join_or_notify(room, identity, None))
        stream.start(first_attempt_done=ok)

    async def _login_ready(self, identity: Identity) -> None:
        xmpp = identity.xmpp
        xmpp.send_presence()
        with contextlib.suppress(Exception):
            await xmpp.plugin["xep_0280"].enable(timeout=5)
        await self._rejoin(identity.stream)
        await self._flush_outbox()

    # --- stream events --------------------------------------------------------------------------

    def _install_handlers(self, stream: Stream) -> None:
        # slixmpp's "message" event only fires for messages with a body (chat states,
        # reactions, markers and retractions have none) and its "presence" event misses MUC
        # presences once the MUC plugin knows the room, so both are taken here directly.
        def on_message(msg: Any) -> None:
            self.inbox.submit(
                _conversation(msg), lambda: self._guard(self._on_message(stream, msg), msg)
            )

        def on_presence(pres: Any) -> None:
            self.inbox.submit(
                _conversation(pres), lambda: self._guard(self._on_presence(stream, pres), pres)
            )

        xmpp = stream.xmpp
        xmpp.register_handler(
            Callback("mimi-bridge message", MatchXPath(f"{{{xmpp.default_ns}}}message"), on_message)
        )
        xmpp.register_handler(
            Callback(
                "mimi-bridge presence", MatchXPath(f"{{{xmpp.default_ns}}}presence"), on_presence
            )
        )

    async def _guard(self, coro: Any, stanza: Any) -> None:
        try:
            await coro
        except Exception:
            self.log.exception("failed to handle a stanza: %s", _short(stanza))

    async def _emit(self, event: RemoteEvent) -> bool:
        try:
            await self.bridge.emit(event)
        except Exception:
            self.log.exception("emit failed for %s", type(event).__name__)
            return False
        return True

    async def _notify(self, user_id: str, text: str, portal: PortalKey | None = None) -> None:
        try:
            await self.bridge.notify(user_id, text, portal)
        except Exception:
            self.log.exception("could not notify %s: %s", user_id, text)

    async def _component_ready(self) -> None:
        self.outage_notified.clear()
        # Portals known to the core: rejoin every Matrix member with a puppet.
        try:
            portals = await self.bridge.portals(NETWORK)
        except Exception:
            self.log.exception("could not list portals")
            portals = []
        for portal in portals:
            found = await self._portal_members(portal)
            if found is None:
                continue
            room, members = found
            for member in members:
                if member.permission == "relay" and member.user_id not in self.sessions:
                    continue
                self.display_names[member.user_id] = member.display_name
                if member.user_id not in room.ours:
                    ident = self.identity_for(member.user_id)
                    room.ours[member.user_id] = Occupant(ident, room.jid, member.display_name)
        await self._rejoin(self.component)
        await self._send_initial_presence()
        await self._flush_outbox()

    async def _send_initial_presence(self) -> None:
        for user_id, (show, status, offline) in list(self.presence.items()):
            ident = self.puppets.get(user_id)
            if ident is not None and not offline:
                self._broadcast_presence(ident, show, status, offline)

    async def _rejoin(self, stream: Stream) -> None:
        jobs = []
        for room in list(self.rooms.values()):
            for occ in list(room.ours.values()):
                if occ.identity.stream is stream and occ.wanted and occ.state != "joined":
                    jobs.append(self._join_or_notify(room, occ.identity, None))
        if jobs:
            started = time.monotonic()
            await asyncio.gather(*jobs)
            self.log.info("rejoined %d occupants in %.2f s", len(jobs), time.monotonic() - started)

    async def _stream_lost(self, stream: Stream) -> None:
        for room in self.rooms.values():
            for occ in room.ours.values():
                if occ.identity.stream is stream:
                    occ.state = "left"
                    if occ.waiter is not None and not occ.waiter.done():
                        occ.waiter.set_result(
                            ("error", set(), "remote-server-timeout\0connection lost")
                        )
            if room.listener() is None:
                # The next join re-reads the occupant list; occupants gone meanwhile leave.
                room.sync_seen = set()

    # --- disco and caps ---------------------------------------------------------------------

    def _install_disco(self) -> None:
        disco = self.component_xmpp.plugin["xep_0030"]
        self._caps_ver = caps_ver([PUPPET_IDENTITY], FEATURES)

        def get_info(jid: Any, node: str | None, ifrom: Any, data: Any) -> DiscoInfo:
            info = DiscoInfo()
            if node and node != f"{CAPS_NODE}#{self._caps_ver}":
                from slixmpp.exceptions import XMPPError

                raise XMPPError("item-not-found")
            if jid.user:
                try:
                    self.mapper.matrix_user(jid)
                except InvalidMapping as e:
                    from slixmpp.exceptions import XMPPError

                    raise XMPPError("item-not-found", str(e)) from e
                info.add_identity(*PUPPET_IDENTITY)
            else:
                info.add_identity(*COMPONENT_IDENTITY)
            for feature in FEATURES:
                info.add_feature(feature)
            if node:
                info["node"] = node
            return info

        disco.api.register(get_info, "get_info")

    @property
    def caps(self) -> tuple[str, str]:
        return CAPS_NODE, self._caps_ver

    # --- MUC joins ----------------------------------------------------------------------------

    async def _join_or_notify(
        self, room: MucRoom, identity: Identity, portal: PortalKey | None
    ) -> Occupant | None:
        try:
            return await self.join(room, identity)
        except ConnectorError as e:
            await self._notify(
                identity.user_id, str(e), portal or PortalKey(NETWORK, room.jid.bare)
            )
        except Exception:
            self.log.exception("joining %s for %s failed", room.jid, identity.user_id)
        return None

    async def join(self, room: MucRoom, identity: Identity) -> Occupant:
        user_id = identity.user_id
        occ = room.ours.get(user_id)
        display = await self._display_name(user_id)
        if occ is None or occ.identity is not identity:
            occ = Occupant(identity, room.jid, display)
            room.ours[user_id] = occ
        occ.wanted = True
        occ.display_name = display
        if occ.state == "joined":
            return occ
        if occ.join_task is None or occ.join_task.done():
            occ.join_task = asyncio.create_task(self._join_attempts(room, occ))
        await asyncio.shield(occ.join_task)
        return occ

    async def _join_attempts(self, room: MucRoom, occ: Occupant) -> None:
        ident = occ.identity
        fallback = ident.user_id[1:].split(":", 1)[0]
        base = mucmod.clean_nick(occ.display_name, fallback)
        loop = asyncio.get_running_loop()
        for attempt in range(10):
            occ.nick = mucmod.nick_candidate(base, self.cfg.nick_conflict_suffix, attempt)
            occ.state = "joining"
            if room.listener() is occ and room.remote:
                room.sync_seen = set()
            occ.waiter = loop.create_future()
            occ.photo = await self._photo_of(ident)
            pres = out.join_presence(
                ident.xmpp,
                pfrom=ident.jid,
                occupant=occ.occupant_jid,
                caps=None if ident.login else self.caps,
                photo=occ.photo,
                **self._presence_args(ident.user_id),
            )
            try:
                ident.stream.send(pres)
            except NotConnected as e:
                occ.state = "left"
                raise ConnectorError(
                    f"Could not join {room.jid}: the XMPP server is not reachable."
                ) from e
            try:
                kind, codes, err = await asyncio.wait_for(occ.waiter, self.cfg.send_timeout * 2)
            except TimeoutError as e:
                occ.state = "left"
                raise ConnectorError(f"Could not join {room.jid}: the room did not answer.") from e
            if kind == "joined":
                occ.state = "joined"
                occ.last_error = None
                room.touch()
                if mucmod.ROOM_CREATED in codes:
                    await self._accept_instant_room(room, ident)
                if room.listener() is occ:
                    await self._after_listener_join(room)
                self.log.debug("%s joined %s as %r", ident.user_id, room.jid, occ.nick)
                return
            condition, _, text = err.partition("\0")
            if condition == "conflict":
                continue
            occ.state = "left"
            reason = mucmod.JOIN_ERRORS.get(condition, condition)
            occ.last_error = reason
            if condition in ("forbidden", "registration-required", "not-authorized"):
                occ.wanted = False
            detail = f" ({text})" if text else ""
            raise ConnectorError(f"Could not join the XMPP room {room.jid}: {reason}{detail}.")
        occ.state = "left"
        raise ConnectorError(f"Could not join {room.jid}: no free nickname for {base!r}.")

    def _presence_args(self, user_id: str) -> dict[str, Any]:
        show, status, _offline = self.presence.get(user_id, (None, None, False))
        return {"show": show, "status": status}

    async def _accept_instant_room(self, room: MucRoom, ident: Identity) -> None:
        iq = out.instant_room_iq(ident.xmpp, ifrom=ident.jid, room=room.jid)
        with contextlib.suppress(IqError, IqTimeout, NotConnected):
            await iq.send(timeout=10)

    async def _after_listener_join(self, room: MucRoom) -> None:
        portal = PortalKey(NETWORK, room.jid.bare)
        if room.sync_seen is not None:
            gone = [nick for nick in room.remote if nick not in room.sync_seen]
            room.sync_seen = None
            for nick in gone:
                ro = room.remote.pop(nick)
                await self._emit(
                    RemoteMembership(
                        portal=portal,
                        sender=Sender(ro.ghost_id, ro.nick),
                        membership=Membership.LEAVE,
                        reason="Left while the bridge was disconnected",
                    )
                )
        await self._emit_members(room)

    async def _emit_members(self, room: MucRoom) -> None:
        if not room.remote:
            return
        members = [
            ChatMember(Sender(ro.ghost_id, ro.nick), mucmod.power_level(ro.affiliation, ro.role))
            for ro in room.remote.values()
        ]
        await self._emit(
            RemoteChatInfo(
                portal=PortalKey(NETWORK, room.jid.bare),
                sender=Sender(room.jid.bare),
                members=members,
            )
        )

    def _send_leave(self, occ: Occupant, status: str | None) -> None:
        if occ.state != "left" and occ.nick:
            with contextlib.suppress(NotConnected):
                occ.identity.stream.send(
                    out.leave_presence(
                        occ.identity.xmpp,
                        pfrom=occ.identity.jid,
                        occupant=occ.occupant_jid,
                        status=status,
                    )
                )
        occ.state = "left"

    async def leave(self, room: MucRoom, user_id: str, status: str | None = None) -> None:
        occ = room.ours.pop(user_id, None)
        if occ is None:
            return
        occ.wanted = False
        self._send_leave(occ, status)
        if occ.join_task is not None and not occ.join_task.done():
            occ.join_task.cancel()

    # --- self-ping (XEP-0410) -----------------------------------------------------------------

    async def _self_ping_loop(self) -> None:
        interval = self.cfg.self_ping_interval
        while not self._stopping:
            await asyncio.sleep(max(1.0, interval / 4))
            try:
                await self.self_ping_all(idle=interval)
            except Exception:
                self.log.exception("self-ping round failed")

    async def self_ping_all(self, idle: float = 0.0) -> int:
        """Self-ping every joined occupant of rooms silent for ``idle`` s; rejoin the ones
        that are no longer in their room. Returns how many were rejoined."""
        now = time.monotonic()
        checks = []
        for room in list(self.rooms.values()):
            if now - room.last_activity < idle:
                continue
            for occ in list(room.ours.values()):
                if occ.state == "joined":
                    checks.append(self._self_ping(room, occ))
                elif (
                    occ.state == "left"
                    and occ.wanted
                    and (occ.join_task is None or occ.join_task.done())
                    and occ.identity.stream.ready.is_set()
                ):
                    # A rejoin that failed earlier (the user was told then): try again.
                    checks.append(self._retry_join(room, occ))
        results = await asyncio.gather(*checks) if checks else []
        return sum(1 for r in results if r)

    async def _retry_join(self, room: MucRoom, occ: Occupant) -> bool:
        try:
            await self.join(room, occ.identity)
        except ConnectorError as e:
            self.log.info("%s still not in %s: %s", occ.identity.user_id, room.jid, e)
            return False
        except Exception:
            self.log.exception("rejoining %s for %s failed", room.jid, occ.identity.user_id)
            return False
        self.log.info("%s is back in %s", occ.identity.user_id, room.jid)
        return True

    async def _self_ping(self, room: MucRoom, occ: Occupant) -> bool:
        ident = occ.identity
        if not ident.stream.ready.is_set():
            return False
        iq = out.self_ping(ident.xmpp, ifrom=ident.jid, occupant=occ.occupant_jid)
        try:
            await iq.send(timeout=self.cfg.send_timeout)
            room.touch()
            return False
        except IqTimeout:
            return False  # inconclusive
        except IqError as e:
            condition = inc.error_text(e.iq)[0]
            if condition in ("service-unavailable", "feature-not-implemented"):
                room.touch()
                return False  # joined; the ping was just not answered by the client
            if condition in ("remote-server-not-found", "remote-server-timeout"):
                return False
        self.log.info("%s is no longer in %s; rejoining", ident.user_id, room.jid)
        occ.state = "left"
        await self._join_or_notify(room, ident, None)
        return True

    # --- incoming stanzas: the cheap first look -------------------------------------------------

    def _wanted(self, tag: str, attrib: dict[str, str]) -> int:
        """Whether a stanza from the component stream is worth parsing, from its top-level
        tag and attributes. Of the copies a MUC sends to each of the bridge's occupants, only
        the listener's copy of groupchat messages and presences is used, plus each occupant's
        own presence; the others are dropped before they are built. Anything unusual (errors,
        unknown rooms or addresses, other stanza types) is kept for the full handlers."""
        frm = attrib.get("from")
        if not frm or attrib.get("type") == "error":
            return KEEP
        bare, _, nick = frm.partition("/")
        room = self.rooms.get(bare)
        if room is None:
            return KEEP
        to = attrib.get("to", "")
        listener = room.listener()
        if listener is None or listener.identity.jid_str == to:
            return KEEP
        occ = room.ours.by_jid.get(to)
        if occ is None:
            return KEEP
        if tag in _MESSAGE_TAGS:
            return DROP if attrib.get("type") == "groupchat" else KEEP
        if tag in _PRESENCE_TAGS:
            if nick and (nick == occ.nick or nick == occ.pending_nick):
                return KEEP  # its own presence (joined, left, kicked, renamed)
            # While it joins, the room may give it another nick (status 110 and 210).
            return KEEP_IF_SELF if occ.state == "joining" else DROP
        return KEEP

    # --- incoming presence --------------------------------------------------------------------

    async def _on_presence(self, stream: Stream, pres: Presence) -> None:
        frm = inc.stanza_jid(pres, "from")
        to = inc.stanza_jid(pres, "to")
        if frm is None or to is None:
            return
        ptype = pres.xml.attrib.get("type", "available")
        room = self.rooms.get(frm.bare)
        if room is not None:
            await self._on_muc_presence(room, pres, frm, to, ptype)
            return
        user_id = self._user_for(stream, to)
        if user_id is None:
            return
        if ptype == "probe" and stream is self.component:
            show, status, offline = self.presence.get(user_id, (None, None, False))
            reply = stream.xmpp.make_presence(
                pto=frm.bare,
                pfrom=self.mapper.full_jid(user_id),
                ptype="unavailable" if offline else None,
            )
            if show:
                reply["show"] = show
            if status:
                reply["status"] = status
            if not offline:
                out.add_caps(reply, *self.caps)
                avmod.add_photo_update(reply, await self.avatars.load(user_id))
            with contextlib.suppress(NotConnected):
                stream.send(reply)
            return
        if ptype not in ("available", "unavailable"):
            return
        portal = PortalKey(NETWORK, frm.bare, receiver=user_id)
        if portal not in self.known_dms:
            return
        if ptype == "unavailable":
            presence = "offline"
        else:
            presence = PRESENCE_FOR_SHOW.get(
                pres.xml.findtext(f"{{{pres.namespace}}}show"), "online"
            )
        status = pres.xml.findtext(f"{{{pres.namespace}}}status")
        photo = avmod.photo_hash(pres.xml) if ptype == "available" else None
        if photo is not None:
            self._avatar_seen(portal, Sender(frm.bare), JID(frm.bare), photo, to)
        await self._emit(
            RemotePresence(portal=portal, sender=Sender(frm.bare), presence=presence, status=status)
        )

    def _user_for(self, stream: Stream, to: JID) -> str | None:
        if stream is self.component:
            try:
                return self.mapper.matrix_user(to)
            except InvalidMapping:
                return None
        for user_id, session in self.sessions.items():
            if session.identity.stream is stream:
                return user_id
        return None

    def _muc_codes(self, stanza: Any) -> set[int]:
        codes: set[int] = set()
        x = stanza.xml.find(f"{{{inc.NS_MUC_USER}}}x")
        if x is None:
            return codes
        for st in x.findall(f"{{{inc.NS_MUC_USER}}}status"):
            with contextlib.suppress(ValueError, TypeError):
                codes.add(int(st.attrib.get("code", "")))
        return codes

    def _muc_item(self, pres: Presence) -> dict[str, str | None]:
        x = pres.xml.find(f"{{{inc.NS_MUC_USER}}}x")
        item = x.find(f"{{{inc.NS_MUC_USER}}}item") if x is not None else None
        if item is None:
            return {}
        actor = item.find(f"{{{inc.NS_MUC_USER}}}actor")
        reason = item.find(f"{{{inc.NS_MUC_USER}}}reason")
        return {
            "role": item.attrib.get("role"),
            "affiliation": item.attrib.get("affiliation"),
            "jid": item.attrib.get("jid"),
            "nick": item.attrib.get("nick"),
            "actor": actor.attrib.get("nick") if actor is not None else None,
            "actor_jid": actor.attrib.get("jid") if actor is not None else None,
            "reason": reason.text if reason is not None else None,
        }

    async def _on_muc_presence(
        self, room: MucRoom, pres: Presence, frm: JID, to: JID, ptype: str
    ) -> None:
        occ = room.by_identity_jid(to)
        if occ is None:
            return
        nick = frm.resource
        codes = self._muc_codes(pres)
        portal = PortalKey(NETWORK, room.jid.bare)
        if ptype == "error":
            condition, text = inc.error_text(pres)
            if occ.waiter is not None and not occ.waiter.done():
                occ.waiter.set_result(("error", codes, f"{condition}\0{text}"))
            else:
                self.log.info("presence error from %s for %s: %s", frm, to, condition)
            return
        if mucmod.SELF in codes or (nick == occ.nick and occ.state == "joining"):
            await self._on_self_presence(room, occ, pres, nick, ptype, codes, portal)
            return
        if room.by_nick(nick) is not None and room.by_nick(nick) is not occ:
            return  # one of the bridge's own occupants
        if not nick or room.listener() is not occ:
            return
        room.touch()
        await self._on_remote_occupant(room, pres, nick, frm, ptype, codes, portal)

    async def _on_self_presence(
        self,
        room: MucRoom,
        occ: Occupant,
        pres: Presence,
        nick: str,
        ptype: str,
        codes: set[int],
        portal: PortalKey,
    ) -> None:
        item = self._muc_item(pres)
        if ptype == "unavailable":
            if mucmod.NICK_CHANGED in codes and item.get("nick"):
                occ.nick = item["nick"]
                return
            was_joined = occ.state == "joined"
            occ.state = "left"
            removed = codes & {
                mucmod.KICKED,
                mucmod.BANNED,
                mucmod.REMOVED_AFFILIATION,
                mucmod.REMOVED_MEMBERS_ONLY,
            }
            if removed:
                occ.wanted = False
                room.ours.pop(occ.identity.user_id, None)
                membership = Membership.BAN if mucmod.BANNED in codes else Membership.KICK
                actor = item.get("actor")
                reason = item.get("reason")
                what = "banned from" if membership == Membership.BAN else "removed from"
                by = f" by {actor}" if actor else ""
                because = f": {reason}" if reason else ""
                await self._notify(
                    occ.identity.user_id,
                    f"You were {what} the XMPP room {room.jid}{by}{because}.",
                    portal,
                )
                actor_ro = room.remote.get(actor) if actor else None
                await self._emit(
                    RemoteMembership(
                        portal=portal,
                        sender=Sender(actor_ro.ghost_id, actor)
                        if actor_ro
                        else Sender(room.jid.bare, room.name),
                        membership=membership,
                        target=Sender(
                            occ.identity.jid.bare,
                            occ.nick,
                            is_from_me=True,
                            matrix_user=occ.identity.user_id,
                        ),
                        reason=reason,
                    )
                )
                return
            if mucmod.SHUTDOWN in codes:
                occ.wanted = False
                await self._notify(
                    occ.identity.user_id, f"The XMPP service of {room.jid} shut down.", portal
                )
                return
            if was_joined and occ.wanted and not self._stopping:
                # Removed for a technical reason (333) or without explanation: rejoin.
                self.log.info(
                    "%s dropped from %s (codes %s); rejoining",
                    occ.identity.user_id,
                    room.jid,
                    sorted(codes),
                )
                self._spawn(self._rejoin_later(room, occ))
            return
        if occ.pending_nick is not None and nick != occ.pending_nick:
            return  # a presence of the old nick while the new one is on its way
        occ.nick = nick  # the room may have changed it (status 210)
        if occ.waiter is not None and not occ.waiter.done():
            occ.waiter.set_result(("joined", codes, ""))
        if mucmod.NON_ANONYMOUS in codes:
            room.non_anonymous = True

    async def _rejoin_later(self, room: MucRoom, occ: Occupant) -> None:
        await asyncio.sleep(1)
        if occ.wanted and occ.state == "left" and room.ours.get(occ.identity.user_id) is occ:
            await self._join_or_notify(room, occ.identity, None)

    def _ghost_for(self, room: MucRoom, nick: str, real: str | None) -> str:
        if real:
            jid = inc.safe_jid(real)
            if jid is not None and jid.domain != self.cfg.domain:
                return jid.bare
        return f"{room.jid.bare}/{nick}"

    async def _on_remote_occupant(
        self,
        room: MucRoom,
        pres: Presence,
        nick: str,
        frm: JID,
        ptype: str,
        codes: set[int],
        portal: PortalKey,
    ) -> None:
        item = self._muc_item(pres)
        real = item.get("jid")
        if real:
            real_jid = inc.safe_jid(real)
            if real_jid is not None and real_jid.domain == self.cfg.domain:
                return  # another Matrix user's puppet seen from a different room view
        ghost = self._ghost_for(room, nick, real)
        if ptype == "unavailable":
            ro = room.remote.pop(nick, None)
            ghost = ro.ghost_id if ro else ghost
            if mucmod.NICK_CHANGED in codes and item.get("nick"):
                new_nick = str(item["nick"])
                if ro is None:
                    ro = RemoteOccupant(nick, ghost, real)
                ro.nick = new_nick
                room.remote[new_nick] = ro
                if room.sync_seen is not None:
                    room.sync_seen.add(new_nick)
                if ro.real_jid or ghost != f"{room.jid.bare}/{nick}":
                    await self._emit(
                        RemoteProfile(
                            portal=portal, sender=Sender(ghost, nick), display_name=new_nick
                        )
                    )
                else:
                    ro.ghost_id = f"{room.jid.bare}/{new_nick}"
                    await self._emit(
                        RemoteProfile(
                            portal=portal,
                            sender=Sender(ghost, nick),
                            display_name=new_nick,
                            new_remote_id=ro.ghost_id,
                        )
                    )
                return
            if ro is None:
                return
            actor = item.get("actor")
            actor_ro = room.remote.get(actor) if actor else None
            reason = item.get("reason")
            # A kick or ban the bridge made for a Matrix user already happened in Matrix.
            ours = self._own_removals.pop((room.jid.bare, nick), None) is not None
            if (mucmod.KICKED in codes or mucmod.BANNED in codes) and not ours:
                membership = Membership.BAN if mucmod.BANNED in codes else Membership.KICK
                await self._emit(
                    RemoteMembership(
                        portal=portal,
                        sender=Sender(actor_ro.ghost_id, actor)
                        if actor_ro
                        else Sender(room.jid.bare, room.name),
                        membership=membership,
                        target=Sender(ghost, nick),
                        reason=reason,
                    )
                )
                return
            status = pres.xml.findtext(f"{{{pres.namespace}}}status")
            if mucmod.REMOVED_TECHNICAL in codes:
                status = status or "Disconnected"
            if ours:
                status = reason or status
            await self._emit(
                RemoteMembership(
                    portal=portal,
                    sender=Sender(ghost, nick),
                    membership=Membership.LEAVE,
                    reason=status or None,
                )
            )
            return
        role = item.get("role") or "participant"
        affiliation = item.get("affiliation") or "none"
        if room.sync_seen is not None:
            room.sync_seen.add(nick)
        ro = room.remote.get(nick)
        photo = avmod.photo_hash(pres.xml)
        listener = room.listener()
        if photo is not None and (ro is None or ro.photo != photo) and listener is not None:
            sender = Sender(ro.ghost_id if ro else ghost, nick)
            self._avatar_seen(portal, sender, frm, photo, listener.identity.jid)
        if ro is None:
            ro = RemoteOccupant(nick, ghost, real, role, affiliation, photo)
            room.remote[nick] = ro
            await self._emit(
                RemoteMembership(
                    portal=portal, sender=Sender(ghost, nick), membership=Membership.JOIN
                )
            )
            listener = room.listener()
            if (
                listener is not None
                and listener.state == "joined"
                and (mucmod.power_level(affiliation, role) > 0)
            ):
                await self._emit_members(room)
            return
        if photo is not None:
            ro.photo = photo
        if (ro.role, ro.affiliation) != (role, affiliation):
            ro.role, ro.affiliation = role, affiliation
            await self._emit_members(room)

    # --- incoming messages --------------------------------------------------------------------

    async def _on_carbon_sent(self, stream: Stream, wrapper: Message) -> None:
        """A message the logged-in user sent from another client: show it as theirs."""
        try:
            msg = wrapper["carbon_sent"]
        except Exception:
            return
        user_id = self._user_for(stream, stream.xmpp.boundjid)
        to = inc.stanza_jid(msg, "to")
        if user_id is None or to is None or msg.xml.attrib.get("type") == "groupchat":
            return
        portal = PortalKey(NETWORK, to.bare, receiver=user_id)
        content = inc.message_content(msg, self.cfg.max_message_bytes)
        if content is None:
            return
        ids = inc.message_ids(msg, None)
        mid = (
            ids.origin or ids.attr or inc.synthesized_id(user_id, content.text, inc.timestamp(msg))
        )
        ident = self.sessions[user_id].identity
        await self.ids.add(MessageRecord(conv_of(portal), mid, None, mid, ident.key))
        self.known_dms.add(portal)
        await self._emit(
            RemoteMessage(
                portal=portal,
                sender=Sender(stream.xmpp.boundjid.bare, is_from_me=True, matrix_user=user_id),
                id=mid,
                content=content,
                timestamp=inc.timestamp(msg),
            )
        )

    async def _on_message(self, stream: Stream, msg: Message) -> None:
        if inc.is_mam_result(msg):
            return
        if msg.xml.find("{urn:xmpp:carbons:2}sent") is not None:
            if inc.stanza_jid(msg, "from") == JID(stream.xmpp.boundjid.bare):
                await self._on_carbon_sent(stream, msg)
            return
        if msg.xml.find("{urn:xmpp:carbons:2}received") is not None:
            try:
                inner = msg["carbon_received"]
            except Exception:
                return
            if inc.stanza_jid(msg, "from") != JID(stream.xmpp.boundjid.bare):
                return  # forged carbon
            msg = inner
        frm = inc.stanza_jid(msg, "from")
        to = inc.stanza_jid(msg, "to")
        if frm is None or to is None:
            self.log.info("dropping a message with a missing or invalid address")
            return
        mtype = msg.xml.attrib.get("type", "normal")
        if mtype == "error":
            await self._on_message_error(stream, msg, frm, to)
            return
        room = self.rooms.get(frm.bare)
        if mtype == "groupchat":
            if room is not None:
                await self._on_groupchat(stream, room, msg, frm, to)
            return
        if room is not None and not frm.resource:
            codes = self._muc_codes(msg)
            if mucmod.CONFIG_CHANGED in codes:
                self._spawn(self._refresh_room_info(room))
            return
        await self._on_direct(stream, msg, frm, to)

    async def _refresh_room_info(self, room: MucRoom) -> None:
        info = await self.resolve_portal(PortalKey(NETWORK, room.jid.bare), None)
        if info is not None:
            await self._emit(
                RemoteChatInfo(
                    portal=PortalKey(NETWORK, room.jid.bare),
                    sender=Sender(room.jid.bare),
                    name=info.name,
                )
            )

    async def _on_message_error(self, stream: Stream, msg: Message, frm: JID, to: JID) -> None:
        mid = msg.xml.attrib.get("id") or ""
        condition, text = inc.error_text(msg)
        readable = f"{condition}" + (f": {text}" if text else "")
        fut = self._pending.get(mid)
        if fut is not None and not fut.done():
            fut.set_exception(ConnectorError(readable))
            return
        echo = self._echoes.pop(mid, None)
        if echo is not None and not echo.done():
            echo.set_result(None)
        sent = self._sent.get(mid)
        room = self.rooms.get(frm.bare)
        if room is not None and condition == "not-acceptable":
            occ = room.by_identity_jid(to)
            if occ is not None and occ.wanted:
                occ.state = "left"
                self._spawn(self._join_or_notify(room, occ.identity, None))
        if sent is not None:
            user_id, portal, summary = sent
            await self._notify(
                user_id, f"Your message “{summary}” was not delivered on XMPP ({readable}).", portal
            )

    async def _on_groupchat(
        self, stream: Stream, room: MucRoom, msg: Message, frm: JID, to: JID
    ) -> None:
        receiver = room.by_identity_jid(to)
        if receiver is None:
            return
        nick = frm.resource
        ids = inc.message_ids(msg, room.jid.bare)
        ours = room.by_nick(nick) if nick else None
        key = ids.origin or ids.attr
        if ours is not None and key:
            fut = self._pending.get(key)
            if fut is not None and not fut.done():
                fut.set_result(ids.stanza)
            if key in self._echoes:
                await self._on_own_reflection(room, key, ids.stanza)
        if room.listener() is not receiver:
            return
        room.touch()
        portal = PortalKey(NETWORK, room.jid.bare)
        conv = conv_of(portal)
        if not nick:
            subj = inc.subject(msg)
            if subj is not None and not inc.body_text(msg):
                if (subj or None) != (room.subject or None):
                    room.subject = subj
                    await self._emit(
                        RemoteChatInfo(portal=portal, sender=Sender(room.jid.bare), topic=subj)
                    )
                return
            retraction = inc.retraction(msg)
            if retraction is not None and retraction.moderated_by is not None:
                await self._emit(
                    RemoteRedaction(
                        portal=portal,
                        sender=Sender(room.jid.bare, room.name),
                        target_id=await self.ids.canonical(conv, retraction.target),
                        reason=retraction.reason,
                    )
                )
                return
            content = inc.message_content(msg, self.cfg.max_message_bytes)
            if content is not None:
                content.kind = inc.MessageKind.NOTICE
                await self._emit(
                    RemoteMessage(
                        portal=portal,
                        sender=Sender(room.jid.bare, room.name),
                        id=ids.canonical()
                        or inc.synthesized_id(str(frm), content.text, inc.timestamp(msg)),
                        content=content,
                        timestamp=inc.timestamp(msg),
                    )
                )
            return
        if ours is not None:
            if key and key in self._sent:
                return  # the reflection of a message the bridge sent
            if not ours.identity.login:
                return
            sender = Sender(
                ours.identity.jid.bare,
                nick,
                is_from_me=True,
                matrix_user=ours.identity.user_id,
            )
        else:
            ro = room.remote.get(nick)
            sender = Sender(ro.ghost_id if ro else f"{room.jid.bare}/{nick}", nick)
        subj = inc.subject(msg)
        if subj is not None and not inc.body_text(msg):
            if (subj or None) != (room.subject or None):
                room.subject = subj
                await self._emit(RemoteChatInfo(portal=portal, sender=sender, topic=subj))
            return
        await self._process(stream, msg, portal, sender, ids, to, group=True)

    async def _on_direct(self, stream: Stream, msg: Message, frm: JID, to: JID) -> None:
        if stream is self.component:
            if not to.user:
                if inc.body_text(msg):
                    self._bounce(
                        stream,
                        msg,
                        "service-unavailable",
                        "This is a Matrix bridge. Write to <user>\\40<homeserver>@"
                        f"{self.cfg.domain} to reach the Matrix user @<user>:<homeserver>.",
                    )
                return
            try:
                user_id = self.mapper.matrix_user(to)
            except InvalidMapping as e:
                if inc.body_text(msg):
                    self._bounce(
                        stream, msg, "jid-malformed", f"No Matrix user has this address ({e})."
                    )
                return
            if not await self._user_exists(user_id):
                if inc.body_text(msg):
                    self._bounce(stream, msg, "item-not-found", f"Unknown Matrix user {user_id}.")
                return
        else:
            found = self._user_for(stream, to)
            if found is None:
                return
            user_id = found
        remote = frm.bare
        if frm.bare in self.rooms and frm.resource:
            remote = str(frm)  # a private message from a MUC occupant
        portal = PortalKey(NETWORK, remote, receiver=user_id)
        sender = Sender(remote, inc.nick_from_message(msg))
        ids = inc.message_ids(msg, None)
        if inc.body_text(msg) and inc.is_oversized(msg, self.cfg.max_message_bytes):
            self._bounce(
                stream,
                msg,
                "not-acceptable",
                f"The message is too long for the bridge (limit {self.cfg.max_message_bytes}"
                " bytes).",
                etype="modify",
            )
            return
        await self._process(stream, msg, portal, sender, ids, to, group=False)

    async def _user_exists(self, user_id: str) -> bool:
        try:
            user = await self.bridge.matrix_user(user_id)
        except Exception:
            return False
        return user is not None

    def _bounce(
        self, stream: Stream, msg: Message, condition: str, text: str, etype: str = "cancel"
    ) -> None:
        with contextlib.suppress(NotConnected, Exception):
            stream.send(out.error_reply(stream.xmpp, msg, condition, text, etype))

    async def _process(
        self,
        stream: Stream,
        msg: Message,
        portal: PortalKey,
        sender: Sender,
        ids: inc.Ids,
        to: JID,
        group: bool,
    ) -> None:
        """Everything a chat or groupchat message can carry, in order of precedence."""
        conv = conv_of(portal)
        stamp = inc.timestamp(msg)
        retraction = inc.retraction(msg)
        if retraction is not None:
            rec = await self.ids.get(conv, retraction.target)
            if (
                rec is not None
                and rec.sender != sender.remote_id
                and retraction.moderated_by is None
            ):
                self.log.info("ignoring a retraction by %s of a message it did not send", sender)
                return
            await self._emit(
                RemoteRedaction(
                    portal=portal,
                    sender=sender,
                    target_id=rec.canonical if rec else retraction.target,
                    reason=retraction.reason,
                    timestamp=stamp,
                )
            )
            return
        reacted = inc.reactions(msg)
        if reacted is not None:
            target_ref, keys = reacted
            target = await self.ids.canonical(conv, target_ref)
            before = await self.ids.reactions(conv, sender.remote_id, target)
            await self.ids.set_reactions(conv, sender.remote_id, target, keys)
            for key in sorted(keys - before):
                await self._emit(
                    RemoteReaction(
                        portal=portal,
                        sender=sender,
                        target_id=target,
                        key=key,
                        id=ids.canonical(),
                        timestamp=stamp,
                    )
                )
            for key in sorted(before - keys):
                await self._emit(
                    RemoteReactionRemove(
                        portal=portal, sender=sender, target_id=target, key=key, timestamp=stamp
                    )
                )
            return
        content = inc.message_content(msg, self.cfg.max_message_bytes)
        corrected = inc.correction_target(msg)
        if corrected is not None and content is not None:
            rec = await self.ids.get(conv, corrected)
            if rec is not None and rec.sender != sender.remote_id:
                self.log.info("ignoring a correction by %s of a message it did not send", sender)
                return
            await self._emit(
                RemoteEdit(
                    portal=portal,
                    sender=sender,
                    target_id=rec.canonical if rec else corrected,
                    content=content,
                    id=ids.canonical(),
                    timestamp=stamp,
                )
            )
            return
        if content is not None:
            mid = ids.canonical() or inc.synthesized_id(sender.remote_id, content.text, stamp)
            reply_to = None
            reply = inc.reply_target(msg)
            if reply is not None:
                reply_to = await self.ids.canonical(conv, reply[0])
            await self.ids.add(
                MessageRecord(conv, mid, ids.stanza, ids.origin or ids.attr, sender.remote_id),
                *([ids.attr] if ids.attr and ids.attr != ids.origin else []),
            )
            if portal.receiver:
                self.known_dms.add(portal)
            await self.media.fill(content.attachments)
            ok = await self._emit(
                RemoteMessage(
                    portal=portal,
                    sender=sender,
                    id=mid,
                    content=content,
                    reply_to=reply_to,
                    timestamp=stamp,
                )
            )
            if ok and not group and inc.receipt_request(msg) and ids.attr:
                frm = inc.stanza_jid(msg, "from")
                if frm is not None:
                    with contextlib.suppress(NotConnected):
                        stream.send(out.receipt(stream.xmpp, mfrom=to, mto=frm, target=ids.attr))
            return
        marker = inc.displayed_marker(msg)
        if marker is not None:
            await self._emit(
                RemoteReceipt(
                    portal=portal,
                    sender=sender,
                    target_id=await self.ids.canonical(conv, marker),
                    timestamp=stamp,
                )
            )
            return
        state = inc.chat_state(msg)
        if state is not None and (not portal.receiver or portal in self.known_dms):
            await self._emit(
                RemoteTyping(portal=portal, sender=sender, typing=state == "composing")
            )

    # --- Matrix -> XMPP -------------------------------------------------------------------------

    def _target(self, portal: PortalKey) -> tuple[JID, out.MsgType, MucRoom | None]:
        if portal.receiver:
            jid = parse_remote_user(portal.remote_id, self.cfg.domain)
            if jid is None:
                raise ConnectorError(f"{portal.remote_id} is not an XMPP address.")
            return jid, "chat", None
        room_jid = parse_room_jid(portal.remote_id)
        if room_jid is None:
            raise ConnectorError(f"{portal.remote_id} is not an XMPP room.")
        return room_jid, "groupchat", self._room(room_jid)

    async def _ensure_in_room(self, room: MucRoom, identity: Identity) -> Occupant:
        occ = room.ours.get(identity.user_id)
        if occ is not None and occ.identity is identity and occ.state == "joined":
            return occ
        return await self.join(room, identity)

    async def _ready_or_queue(self, identity: Identity, portal: PortalKey) -> bool:
        if identity.stream.ready.is_set():
            return True
        return await identity.stream.wait_ready(self.cfg.outage_grace)

    async def _queue(self, item: Outgoing) -> None:
        self.outbox.append(item)
        key = (item.identity.user_id, item.portal)
        if key not in self.outage_notified:
            self.outage_notified.add(key)
            await self._notify(
                item.identity.user_id,
                "The XMPP server is not reachable right now. Your messages are kept and sent "
                "when the connection is back.",
                item.portal,
            )

    async def _flush_outbox(self) -> None:
        pending = list(self.outbox)
        self.outbox.clear()
        for item in pending:
            if not item.identity.stream.ready.is_set():
                self.outbox.append(item)
                continue
            age = time.monotonic() - item.created
            if age > self.cfg.outbox_ttl:
                await self._notify(
                    item.identity.user_id,
                    f"Your message “{item.summary}” could not be delivered to XMPP "
                    f"(the server was unreachable for {int(age)} s).",
                    item.portal,
                )
                continue
            try:
                await self._send_now(item)
            except ConnectorError as e:
                await self._notify(
                    item.identity.user_id,
                    f"Your message “{item.summary}” was not delivered to XMPP: {e}",
                    item.portal,
                )

    async def _send_now(self, item: Outgoing) -> None:
        """Send a stanza without waiting for the MUC's reflection: the message keeps its
        origin-id as its id, and the room's stanza-id is added to its record when the
        reflection comes back (:meth:`_on_own_reflection`); an error the room answers
        instead is told to the user (:meth:`_on_message_error`)."""
        _mto, _mtype, room = self._target(item.portal)
        if room is not None:
            self.display_names.setdefault(item.identity.user_id, item.display_name)
            await self._ensure_in_room(room, item.identity)
        stanza = item.build()
        self._remember_sent(item.origin_id, item.identity.user_id, item.portal, item.summary)
        if room is not None:
            self._echoes[item.origin_id] = asyncio.get_running_loop().create_future()
            while len(self._echoes) > 10_000:
                _mid, old = self._echoes.popitem(last=False)
                if not old.done():
                    old.set_result(None)
        item.identity.stream.send(stanza)

    def _remember_sent(self, mid: str, user_id: str, portal: PortalKey, summary: str) -> None:
        self._sent[mid] = (user_id, portal, summary)
        while len(self._sent) > 10_000:
            self._sent.popitem(last=False)

    async def _on_own_reflection(
        self, room: MucRoom, origin_id: str, stanza_id: str | None
    ) -> None:
        """The MUC reflected a message the bridge sent: its stanza-id joins the record (the
        id the room and its occupants use for replies, reactions, markers and retractions)."""
        fut = self._echoes.pop(origin_id, None)
        if fut is None:
            return
        if stanza_id:
            conv = conv_of(PortalKey(NETWORK, room.jid.bare))
            rec = await self.ids.get(conv, origin_id)
            if rec is not None and rec.stanza_id is None:
                await self.ids.add(
                    MessageRecord(conv, rec.canonical, stanza_id, rec.origin_id, rec.sender)
                )
        if not fut.done():
            fut.set_result(stanza_id)

    async def _room_ref(self, portal: PortalKey, rec: MessageRecord) -> str:
        """The id that refers to a message in a MUC: its stanza-id (XEP-0359), waiting for
        the reflection of a message the bridge has just sent; its own id without one."""
        if rec.stanza_id is None and rec.origin_id:
            fut = self._echoes.get(rec.origin_id)
            if fut is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(fut), self.cfg.send_timeout)
                rec = await self._ref_ids(portal, rec.canonical)
        return rec.stanza_id or rec.canonical

    async def _deliver(self, item: Outgoing) -> str:
        """Send now, or queue through an outage. Returns the canonical id."""
        conv = conv_of(item.portal)
        if not await self._ready_or_queue(item.identity, item.portal):
            await self.ids.add(
                MessageRecord(conv, item.origin_id, None, item.origin_id, item.identity.key)
            )
            await self._queue(item)
            return item.origin_id
        await self.ids.add(
            MessageRecord(conv, item.origin_id, None, item.origin_id, item.identity.key)
        )
        try:
            await self._send_now(item)
        except NotConnected:
            await self._queue(item)
        return item.origin_id

    async def _ref_ids(self, portal: PortalKey, remote_id: str) -> MessageRecord:
        rec = await self.ids.get(conv_of(portal), remote_id)
        if rec is None:
            rec = MessageRecord(conv_of(portal), remote_id, remote_id, remote_id, "")
        return rec

    def _reply_to_jid(
        self, portal: PortalKey, room: MucRoom | None, sender: str | None
    ) -> str | None:
        if not sender:
            return None
        if room is None:
            return sender if "@" in sender or "." in sender else None
        ro = room.remote_by_ghost(sender)
        if ro is not None:
            return f"{room.jid.bare}/{ro.nick}"
        if sender.startswith(room.jid.bare + "/"):
            return sender
        return None

    async def send_message(self, identity: Identity, msg: MatrixMessage) -> SentMessage:
        mto, mtype, room = self._target(msg.portal)
        self.display_names[identity.user_id] = msg.sender.display_name
        content = msg.content
        body = out.body_for(content)
        if len(body.encode()) > self.cfg.max_message_bytes:
            try:
                link = await self.bridge.upload_text(body, "message.txt")
            except Exception as e:
                raise ConnectorError("The message is too long for XMPP.") from e
            preview = body[: min(300, self.cfg.max_message_bytes // 4)].rstrip()
            body = f"{preview}… (full message: {link})"
        items: list[tuple[str, str | None, str | None]] = []  # (body, oob url, desc)
        attachments = [a for a in content.attachments if a.url or a.mxc]
        for att in attachments:
            url = att.url or (self.bridge.mxc_to_url(att.mxc) if att.mxc else None)
            if url:
                items.append((url, url, att.filename))
        if content.attachments and not attachments:
            raise NotSupported("XMPP can only carry files as links, and this file has none.")
        caption = body.strip()
        if caption and not (attachments and caption in {a.filename for a in attachments}):
            items.insert(0, (body, None, None))
        if not items:
            raise ConnectorError("Nothing to send.")
        reply_ref = None
        if msg.reply_to is not None:
            reply_rec = await self._ref_ids(msg.portal, msg.reply_to.remote_id)
            reply_ref = (
                await self._room_ref(msg.portal, reply_rec)
                if room
                else (reply_rec.origin_id or reply_rec.canonical)
            )
        first_id: str | None = None
        for index, (text, url, desc) in enumerate(items):
            origin_id = out.new_id()

            def build(
                text: str = text,
                url: str | None = url,
                desc: str | None = desc,
                origin_id: str = origin_id,
                index: int = index,
            ) -> Message:
                stanza, _ = out.message(
                    identity.xmpp,
                    mfrom=identity.jid,
                    mto=mto,
                    mtype=mtype,
                    body=text,
                    msg_id=origin_id,
                )
                if url:
                    out.add_oob(stanza, url, desc)
                if index == 0 and reply_ref is not None and msg.reply_to is not None:
                    sender = msg.reply_to.sender_remote_id
                    to = self._reply_to_jid(msg.portal, room, sender)
                    quoted_nick = None
                    if room is not None and to and "/" in to:
                        quoted_nick = JID(to).resource
                    out.add_reply(stanza, reply_ref, to, msg.reply_to.text, quoted_nick)
                stanza["markable"] = True
                if mtype == "chat":
                    stanza["request_receipt"] = True
                    stanza["chat_state"] = "active"
                return stanza

            canonical = await self._deliver(
                Outgoing(
                    identity, msg.portal, msg.sender.display_name, origin_id, build, _summary(text)
                )
            )
            first_id = first_id or canonical
        if msg.portal.receiver:
            self.known_dms.add(msg.portal)
        assert first_id is not None
        return SentMessage(remote_id=first_id)

    async def send_edit(self, identity: Identity, edit: MatrixEdit) -> SentMessage | None:
        mto, mtype, _room = self._target(edit.portal)
        rec = await self._ref_ids(edit.portal, edit.target.remote_id)
        body = out.body_for(edit.content)
        origin_id = out.new_id()

        def build() -> Message:
            stanza, _ = out.message(
                identity.xmpp,
                mfrom=identity.jid,
                mto=mto,
                mtype=mtype,
                body=body,
                msg_id=origin_id,
            )
            stanza["replace"]["id"] = rec.origin_id or rec.canonical
            return stanza

        await self._deliver(
            Outgoing(
                identity, edit.portal, edit.sender.display_name, origin_id, build, _summary(body)
            )
        )
        return None

    async def send_redaction(self, identity: Identity, redaction: MatrixRedaction) -> None:
        mto, mtype, room = self._target(redaction.portal)
        rec = await self._ref_ids(redaction.portal, redaction.target.remote_id)
        own = rec.sender == identity.key or (
            redaction.target.sender_remote_id in (identity.jid.bare, identity.key)
        )
        if own or room is None:
            if not own:
                raise NotSupported("XMPP has no way to delete someone else's private message.")
            ref = (
                await self._room_ref(redaction.portal, rec)
                if room
                else (rec.origin_id or rec.canonical)
            )
            origin_id = out.new_id()

            def build() -> Message:
                stanza = out.retraction(
                    identity.xmpp, mfrom=identity.jid, mto=mto, mtype=mtype, target=ref
                )
                stanza["id"] = origin_id
                stanza["origin_id"]["id"] = origin_id
                return stanza

            await self._deliver(
                Outgoing(
                    identity,
                    redaction.portal,
                    redaction.sender.display_name,
                    origin_id,
                    build,
                    "(deletion)",
                )
            )
            return
        # Moderation: retract someone else's message in a MUC (XEP-0425).
        assert room is not None
        await self._ensure_in_room(room, identity)
        iq = out.moderation_iq(
            identity.xmpp,
            ifrom=identity.jid,
            room=room.jid,
            target=await self._room_ref(redaction.portal, rec),
            reason=redaction.reason,
        )
        try:
            await iq.send(timeout=self.cfg.send_timeout)
        except IqError as e:
            condition = inc.error_text(e.iq)[0]
            if condition in ("feature-not-implemented", "service-unavailable", "bad-request"):
                raise NotSupported(
                    "The XMPP room does not support message moderation (XEP-0425); the "
                    "message was deleted on Matrix only."
                ) from e
            raise ConnectorError(f"The XMPP room refused the deletion ({condition}).") from e
        except IqTimeout as e:
            raise ConnectorError("The XMPP room did not answer the deletion.") from e

    async def _send_reactions(
        self,
        identity: Identity,
        portal: PortalKey,
        target_id: str,
        keys: frozenset[str],
        display_name: str,
    ) -> str:
        mto, mtype, room = self._target(portal)
        rec = await self._ref_ids(portal, target_id)
        ref = await self._room_ref(portal, rec) if room else (rec.origin_id or rec.canonical)
        await self.ids.set_reactions(conv_of(portal), identity.key, rec.canonical, keys)
        origin_id = out.new_id()

        def build() -> Message:
            stanza, _ = out.reactions(
                identity.xmpp, mfrom=identity.jid, mto=mto, mtype=mtype, target=ref, keys=keys
            )
            stanza["id"] = origin_id
            stanza["origin_id"]["id"] = origin_id
            return stanza

        await self._deliver(
            Outgoing(identity, portal, display_name, origin_id, build, "(reaction)")
        )
        return origin_id

    async def send_reaction(self, identity: Identity, reaction: MatrixReaction) -> SentMessage:
        rec = await self._ref_ids(reaction.portal, reaction.target.remote_id)
        current = await self.ids.reactions(conv_of(reaction.portal), identity.key, rec.canonical)
        rid = await self._send_reactions(
            identity,
            reaction.portal,
            reaction.target.remote_id,
            current | {reaction.key},
            reaction.sender.display_name,
        )
        return SentMessage(remote_id=rid)

    async def send_reaction_remove(self, identity: Identity, removal: MatrixReactionRemove) -> None:
        rec = await self._ref_ids(removal.portal, removal.target.remote_id)
        current = await self.ids.reactions(conv_of(removal.portal), identity.key, rec.canonical)
        await self._send_reactions(
            identity,
            removal.portal,
            removal.target.remote_id,
            current - {removal.key},
            removal.sender.display_name,
        )

    async def send_typing(self, identity: Identity, typing: MatrixTyping) -> None:
        mto, mtype, room = self._target(typing.portal)
        if not identity.stream.ready.is_set():
            return
        if room is not None:
            occ = room.ours.get(identity.user_id)
            if occ is None or occ.state != "joined":
                return
        stanza = out.chat_state(
            identity.xmpp,
            mfrom=identity.jid,
            mto=mto,
            mtype=mtype,
            state="composing" if typing.typing else "paused",
        )
        with contextlib.suppress(NotConnected):
            identity.stream.send(stanza)

    async def send_receipt(self, identity: Identity, receipt: MatrixReceipt) -> None:
        mto, mtype, room = self._target(receipt.portal)
        rec = await self._ref_ids(receipt.portal, receipt.target.remote_id)
        if rec.sender == identity.key or not identity.stream.ready.is_set():
            return
        if room is not None:
            occ = room.ours.get(identity.user_id)
            if occ is None or occ.state != "joined":
                return
            ref = rec.stanza_id or rec.canonical
        else:
            ref = rec.origin_id or rec.canonical
        stanza = out.displayed(identity.xmpp, mfrom=identity.jid, mto=mto, mtype=mtype, target=ref)
        with contextlib.suppress(NotConnected):
            identity.stream.send(stanza)

    async def handle_membership(self, identity: Identity, change: MatrixMembership) -> None:
        if change.portal.receiver:
            return
        _mto, _mtype, room = self._target(change.portal)
        assert room is not None
        if change.target is None:
            # The sender joins or leaves, or removes another Matrix user from the portal.
            who = change.target_matrix_user or identity.user_id
            if change.membership == Membership.JOIN and who == identity.user_id:
                self.display_names[identity.user_id] = change.sender.display_name
                await self.join(room, identity)
            elif change.membership in (Membership.LEAVE, Membership.KICK, Membership.BAN):
                await self.leave(room, who, change.reason)
            return
        ghost = change.target.remote_id
        ro = room.remote_by_ghost(ghost)
        if change.membership == Membership.INVITE:
            jid = parse_remote_user(ghost, self.cfg.domain)
            if jid is None or jid.resource:
                raise NotSupported("Only XMPP users (not anonymous occupants) can be invited.")
            await self._ensure_in_room(room, identity)
            identity.stream.send(
                out.invite(
                    identity.xmpp,
                    mfrom=identity.jid,
                    room=room.jid,
                    to=jid.bare,
                    reason=change.reason,
                )
            )
            return
        removal: tuple[str, str] | None = None
        if change.membership == Membership.KICK:
            if ro is None:
                raise ConnectorError("That XMPP user is not in the room.")
            item = {"nick": ro.nick, "role": "none"}
            removal = (room.jid.bare, ro.nick)
        elif change.membership in (Membership.BAN, Membership.UNBAN):
            real = ro.real_jid if ro else None
            if real is None and "/" not in ghost:
                real = ghost
            if real is None:
                raise NotSupported("The XMPP user's address is hidden in this room; cannot ban.")
            bare = JID(real).bare
            affiliation = "outcast" if change.membership == Membership.BAN else "none"
            item = {"jid": bare, "affiliation": affiliation}
            if ro is not None and change.membership == Membership.BAN:
                removal = (room.jid.bare, ro.nick)
        else:
            return
        await self._ensure_in_room(room, identity)
        iq = out.admin_iq(
            identity.xmpp, ifrom=identity.jid, room=room.jid, item=item, reason=change.reason
        )
        if removal is not None:
            self._own_removals[removal] = time.monotonic()
            while len(self._own_removals) > 1000:
                self._own_removals.popitem(last=False)
        try:
            await iq.send(timeout=self.cfg.send_timeout)
        except IqError as e:
            if removal is not None:
                self._own_removals.pop(removal, None)
            condition = inc.error_text(e.iq)[0]
            raise ConnectorError(
                f"The XMPP room refused the {change.membership.value} ({condition})."
            ) from e
        except IqTimeout as e:
            if removal is not None:
                self._own_removals.pop(removal, None)
            raise ConnectorError("The XMPP room did not answer.") from e

    async def send_room_meta(self, identity: Identity, change: MatrixRoomMeta) -> None:
        _mto, _mtype, room = self._target(change.portal)
        if room is None:
            return
        if change.topic is not None:
            await self._ensure_in_room(room, identity)
            await self._set_subject(identity, room, change.topic)
        if change.name is not None or change.avatar is not None:
            raise NotSupported("Room names and avatars are not changed on XMPP by the bridge.")

    async def _set_subject(self, identity: Identity, room: MucRoom, text: str) -> None:
        """Change the MUC subject and wait for the room's answer: the reflected subject, or
        an error (occupants without the right to change it get ``forbidden``)."""
        stanza = out.subject(identity.xmpp, mfrom=identity.jid, room=room.jid, text=text)
        mid = out.new_id()
        stanza["id"] = mid
        stanza["origin_id"]["id"] = mid
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._pending[mid] = fut
        previous = room.subject
        room.subject = text  # the reflection is not a change to bridge back
        try:
            identity.stream.send(stanza)
            await asyncio.wait_for(fut, self.cfg.send_timeout)
        except NotConnected as e:
            room.subject = previous
            raise ConnectorError("The XMPP server is not reachable right now.") from e
        except TimeoutError as e:
            raise ConnectorError("The XMPP room did not answer the subject change.") from e
        except ConnectorError as e:
            room.subject = previous
            raise ConnectorError(f"The XMPP room refused the subject change ({e.args[0]}).") from e
        finally:
            self._pending.pop(mid, None)

    def _broadcast_presence(
        self, identity: Identity, show: str | None, status: str | None, offline: bool
    ) -> None:
        xmpp = identity.xmpp
        for room in self.rooms.values():
            occ = room.ours.get(identity.user_id)
            if occ is None or occ.state != "joined" or occ.identity is not identity:
                continue
            pres = xmpp.make_presence(pfrom=identity.jid, pto=occ.occupant_jid)
            if offline:
                pres["show"] = "xa"
            elif show:
                pres["show"] = show
            if status:
                pres["status"] = status
            if not identity.login:
                out.add_caps(pres, *self.caps)
                occ.photo = self.avatars.known_hash(identity.user_id)
                avmod.add_photo_update(pres, occ.photo)
            with contextlib.suppress(NotConnected):
                identity.stream.send(pres)
        if identity.login:
            with contextlib.suppress(Exception):
                xmpp.send_presence(pshow=show, pstatus=status)
            return
        roster = xmpp.roster[identity.jid.bare]
        for contact in list(roster):
            item = roster[contact]
            if item["subscription"] not in ("from", "both"):
                continue
            pres = xmpp.make_presence(
                pfrom=identity.jid, pto=contact, ptype="unavailable" if offline else None
            )
            if show and not offline:
                pres["show"] = show
            if status:
                pres["status"] = status
            out.add_caps(pres, *self.caps)
            if not offline:
                avmod.add_photo_update(pres, self.avatars.known_hash(identity.user_id))
            with contextlib.suppress(NotConnected):
                identity.stream.send(pres)

    async def send_presence(self, identity: Identity, presence: str, status: str | None) -> None:
        offline = presence == "offline"
        show = SHOW_FOR.get(presence)
        self.presence[identity.user_id] = (show, status, offline)
        if identity.stream.ready.is_set():
            self._broadcast_presence(identity, show, status, offline)

    # --- profiles: nicks and avatars ------------------------------------------------------------

    async def _photo_of(self, identity: Identity) -> str | None:
        """The avatar hash a puppet's presence carries (None: not known; own accounts have
        their own avatar)."""
        if identity.login:
            return None
        user_id = identity.user_id
        known = self.avatars.known_hash(user_id)
        if known is None:
            known = await self.avatars.load(user_id)
        if known is None:
            # Asked once: "no avatar" is remembered too, until a profile change says otherwise.
            att = await self.bridge.matrix_avatar(user_id)
            await self.avatars.set(
                user_id, avmod.Avatar.of(att.data, att.mimetype) if att and att.data else None
            )
            known = self.avatars.known_hash(user_id)
        return known

    async def handle_profile(self, identity: Identity, change: MatrixProfile) -> None:
        """A Matrix user's new display name or avatar, seen in one portal: the occupant of
        that portal's MUC changes its nick (XEP-0045 §7.6) and announces the new avatar hash
        (XEP-0153); the vCard the component serves for the user's JID has the new picture."""
        user_id = identity.user_id
        if change.display_name:
            self.display_names[user_id] = change.display_name
        if not identity.login:
            if change.avatar is not None and change.avatar.data:
                avatar = avmod.Avatar.of(change.avatar.data, change.avatar.mimetype)
                if await self.avatars.set(user_id, avatar):
                    self._announce_avatar_to_contacts(identity)
            elif change.avatar_removed and await self.avatars.set(user_id, None):
                self._announce_avatar_to_contacts(identity)
        if change.portal.receiver:
            return
        room = self.rooms.get(change.portal.remote_id)
        occ = room.ours.get(user_id) if room is not None else None
        if room is None or occ is None or occ.identity is not identity:
            return
        if change.display_name:
            occ.display_name = change.display_name
        if occ.state != "joined" or not identity.stream.ready.is_set():
            return  # the next join uses the new name and avatar
        if change.display_name and await self._rename(room, occ, change.display_name):
            return  # the new nick's presence carried the avatar hash too
        photo = self.avatars.known_hash(user_id) if not identity.login else None
        if photo != occ.photo:
            occ.photo = photo
            with contextlib.suppress(NotConnected):
                identity.stream.send(self._occupant_presence(occ, occ.occupant_jid))

    def _occupant_presence(self, occ: Occupant, to: JID) -> Presence:
        ident = occ.identity
        return out.occupant_presence(
            ident.xmpp,
            pfrom=ident.jid,
            occupant=to,
            caps=None if ident.login else self.caps,
            photo=occ.photo,
            **self._presence_args(ident.user_id),
        )

    def _announce_avatar_to_contacts(self, identity: Identity) -> None:
        show, status, offline = self.presence.get(identity.user_id, (None, None, False))
        if offline or not identity.stream.ready.is_set():
            return
        roster = identity.xmpp.roster[identity.jid.bare]
        for contact in list(roster):
            if roster[contact]["subscription"] not in ("from", "both"):
                continue
            pres = identity.xmpp.make_presence(pfrom=identity.jid, pto=contact)
            if show:
                pres["show"] = show
            if status:
                pres["status"] = status
            out.add_caps(pres, *self.caps)
            avmod.add_photo_update(pres, self.avatars.known_hash(identity.user_id))
            with contextlib.suppress(NotConnected):
                identity.stream.send(pres)

    async def _rename(self, room: MucRoom, occ: Occupant, display_name: str) -> bool:
        """Change an occupant's nick to follow a new display name, resolving conflicts as at
        join. Returns whether a presence went to the room."""
        ident = occ.identity
        fallback = ident.user_id[1:].split(":", 1)[0]
        base = mucmod.clean_nick(display_name, fallback)
        suffix = self.cfg.nick_conflict_suffix
        if occ.nick == base:
            return False
        loop = asyncio.get_running_loop()
        occ.photo = await self._photo_of(ident)
        for attempt in range(10):
            nick = mucmod.nick_candidate(base, suffix, attempt)
            if nick == occ.nick:
                return False  # already the best nick free for this name
            occ.pending_nick = nick
            occ.waiter = waiter = loop.create_future()
            try:
                ident.stream.send(self._occupant_presence(occ, JID(f"{room.jid.bare}/{nick}")))
                kind, _codes, err = await asyncio.wait_for(waiter, self.cfg.send_timeout)
            except NotConnected:
                return False
            except TimeoutError:
                self.log.info("%s: no answer to the nick change to %r", room.jid, nick)
                return True
            finally:
                occ.pending_nick = None
            if kind == "joined":
                self.log.debug("%s is now %r in %s", ident.user_id, occ.nick, room.jid)
                return True
            condition, _, text = err.partition("\0")
            if condition == "conflict":
                continue
            reason = mucmod.JOIN_ERRORS.get(condition, condition)
            await self._notify(
                ident.user_id,
                f"Your nickname in the XMPP room {room.jid} stays {occ.nick!r}: the room "
                f"refused {nick!r} ({reason}{': ' + text if text else ''}).",
                PortalKey(NETWORK, room.jid.bare),
            )
            return True
        return True

    def _install_vcard(self) -> None:
        xmpp = self.component_xmpp

        def on_vcard(iq: Any) -> None:
            self._spawn(self._answer_vcard(iq))

        xmpp.register_handler(
            Callback(
                "mimi-bridge vcard",
                MatchXPath(f"{{{xmpp.default_ns}}}iq/{{{avmod.NS_VCARD}}}vCard"),
                on_vcard,
            )
        )

    async def _answer_vcard(self, iq: Any) -> None:
        """vCard-temp (XEP-0054) of a Matrix user's JID: the display name and the avatar."""
        itype = iq.xml.attrib.get("type")
        if itype not in ("get", "set"):
            return
        to = inc.stanza_jid(iq, "to")
        frm = inc.stanza_jid(iq, "from")
        if to is None or frm is None:
            return
        reply = self.component_xmpp.make_iq_result(iq.xml.attrib.get("id", ""), ito=frm, ifrom=to)
        if itype == "set":
            reply = self._iq_error(
                iq, to, frm, "forbidden", "vCards of Matrix users are read-only."
            )
        elif not to.user:
            reply.xml.append(avmod.vcard("Matrix bridge", None))
        else:
            try:
                user_id = self.mapper.matrix_user(to)
            except InvalidMapping as e:
                reply = self._iq_error(iq, to, frm, "item-not-found", str(e))
            else:
                if user_id in self.sessions or not await self._user_exists(user_id):
                    reply = self._iq_error(iq, to, frm, "item-not-found", "No such Matrix user.")
                else:
                    ident = self._puppet(user_id)
                    await self._photo_of(ident)
                    avatar = await self.avatars.get(user_id)
                    name = await self._display_name(user_id)
                    reply.xml.append(avmod.vcard(name, avatar))
        with contextlib.suppress(NotConnected):
            self.component.send(reply)

    def _iq_error(self, iq: Any, to: JID, frm: JID, condition: str, text: str) -> Any:
        return self.component_xmpp.make_iq_error(
            iq.xml.attrib.get("id", ""),
            type="cancel",
            condition=condition,
            text=text,
            ito=frm,
            ifrom=to,
        )

    def _avatar_seen(
        self, portal: PortalKey, sender: Sender, whose: JID, photo: str, via: JID
    ) -> None:
        """An XMPP user's presence announced an avatar hash: fetch the vCard (through the
        MUC for an occupant) unless the ghost already has that picture."""
        previous = self._ghost_photos.get(sender.remote_id)
        if previous == photo:
            return
        self._ghost_photos[sender.remote_id] = photo
        self._ghost_photos.move_to_end(sender.remote_id)
        while len(self._ghost_photos) > 10_000:
            self._ghost_photos.popitem(last=False)
        if photo:
            self._spawn(self._fetch_avatar(portal, sender, whose, photo, via))
        elif previous:  # an empty <photo/> after a picture: the user removed it
            self._spawn(
                self._emit(RemoteProfile(portal=portal, sender=sender, avatar_removed=True))
            )

    async def _fetch_avatar(
        self, portal: PortalKey, sender: Sender, whose: JID, photo: str, via: JID
    ) -> None:
        stream = self.component
        for session in self.sessions.values():
            if session.identity.jid == via:
                stream = session.identity.stream
        iq = stream.xmpp.make_iq_get(ito=whose, ifrom=via if stream is self.component else None)
        iq.xml.append(ET.Element(f"{{{avmod.NS_VCARD}}}vCard"))
        try:
            result = await iq.send(timeout=self.cfg.send_timeout)
        except (IqError, IqTimeout, NotConnected) as e:
            self.log.info("no vCard from %s: %s", whose, e)
            self._ghost_photos.pop(sender.remote_id, None)
            return
        avatar = avmod.vcard_photo(result.xml.find(f"{{{avmod.NS_VCARD}}}vCard"))
        if avatar is None:
            return
        if avatar.sha1 != photo:
            self.log.debug("vCard photo of %s does not match its hash", whose)
        ext = avatar.mimetype.rpartition("/")[2] or "img"
        await self._emit(
            RemoteProfile(
                portal=portal,
                sender=sender,
                avatar=Attachment(
                    f"avatar.{ext}", avatar.mimetype, data=avatar.data, size=len(avatar.data)
                ),
            )
        )

    # --- history (XEP-0313) -------------------------------------------------------------------

    async def fetch_history(self, portal: PortalKey, limit: int) -> list[RemoteMessage]:
        if portal.receiver or limit <= 0:
            return []
        room_jid = parse_room_jid(portal.remote_id)
        if room_jid is None or not await self.component.wait_ready(self.cfg.outage_grace):
            return []
        xmpp = self.component_xmpp
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
        room = self._room(room_jid)
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
                        mx = self.mapper.matrix_user(real_jid)
                    except InvalidMapping:
                        continue
                    sender = Sender(real_jid.bare, frm.resource, is_from_me=True, matrix_user=mx)
                else:
                    sender = Sender(self._ghost_for(room, frm.resource, real), frm.resource)
                origin = ids.origin or ids.attr
                corrected = inc.correction_target(inner)
                if corrected and corrected in by_origin:
                    by_origin[corrected].content = content
                    continue
                rec = MessageRecord(conv, archive_id, archive_id, origin, sender.remote_id)
                await self.ids.add(rec)
                message = RemoteMessage(
                    portal=portal,
                    sender=sender,
                    id=archive_id,
                    content=content,
                    timestamp=inc.timestamp(inner),
                )
                reply = inc.reply_target(inner)
                if reply is not None:
                    message.reply_to = await self.ids.canonical(conv, reply[0])
                await self.media.fill(content.attachments)
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


_MESSAGE_TAGS = frozenset({"{jabber:component:accept}message", "{jabber:client}message"})
_PRESENCE_TAGS = frozenset({"{jabber:component:accept}presence", "{jabber:client}presence"})


def _conversation(stanza: Any) -> str:
    """The key that orders incoming stanzas: the sender's bare JID (a room, or a user)."""
    return str(stanza.xml.attrib.get("from", "")).split("/", 1)[0].lower()


def _short(stanza: Any) -> str:
    try:
        text = str(stanza)
    except Exception:
        return "<unprintable stanza>"
    return text if len(text) < 500 else text[:500] + "..."


__all__ = ["ConfigError", "XMPPClient", "XMPPConnector"]
