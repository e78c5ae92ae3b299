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
from collections.abc import Mapping
from typing import Any

from slixmpp import JID
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.plugins.xep_0030.stanza import DiscoInfo
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from bridge.connector import (
    BridgeAPI,
    ChatInfo,
    ConfigError,
    ConnectionChange,
    ConnectionState,
    ConnectorError,
    GhostInfo,
    Login,
    LoginResult,
    MatrixEdit,
    MatrixMembership,
    MatrixMessage,
    MatrixPowerLevel,
    MatrixProfile,
    MatrixReaction,
    MatrixReactionRemove,
    MatrixReceipt,
    MatrixRedaction,
    MatrixRoomMeta,
    MatrixTyping,
    MatrixUser,
    Namespace,
    NetworkClient,
    NetworkConnector,
    PortalKey,
    RemoteConnection,
    RemoteEvent,
    RemoteMessage,
    Sender,
    SentMessage,
    escape_localpart,
    unescape_localpart,
)
from bridge.connector.ids import InvalidEscape

from . import matrix_to_xmpp as out
from . import xmpp_to_matrix as inc
from .avatars import AvatarStore
from .component import (
    DROP,
    KEEP,
    KEEP_IF_SELF,
    SerialInbox,
    Stream,
    make_client,
    make_component,
)
from .config import XMPPConfig, parse_config
from .history import History
from .identity import NETWORK, Identity, LoginSession
from .idmap import IdStore
from .jid_mapping import InvalidMapping, JidMapper, parse_remote_user, parse_room_jid
from .joins import MucJoins
from .media import MediaFetcher
from .messages_in import MessagesIn
from .messages_out import MessagesOut
from .muc import MucRoom, Occupant
from .pep import NOTIFY_FEATURE, PepAvatars
from .presence_in import PresenceIn
from .profiles import Profiles
from .ranks import Ranks
from .roster import Roster
from .tables import MIGRATIONS

NS_MUC = "http://jabber.org/protocol/muc"
CAPS_NODE = "https://github.com/mimi-bridge/mimi-bridge"
FEATURES = [
    "http://jabber.org/protocol/disco#info",
    "http://jabber.org/protocol/caps",
    "http://jabber.org/protocol/chatstates",
    "http://jabber.org/protocol/muc",
    "jabber:x:oob",
    NOTIFY_FEATURE,  # urn:xmpp:avatar:metadata+notify: XMPP users' PEP avatar changes
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


def caps_ver(identities: list[tuple[str, str, str]], features: list[str]) -> str:
    """XEP-0115 §5.1 verification string (no extended forms)."""
    s = "".join(f"{c}/{t}//{n}<" for c, t, n in sorted(identities))
    s += "".join(f"{f}<" for f in sorted(features))
    return base64.b64encode(hashlib.sha1(s.encode()).digest()).decode()


class XMPPClient(NetworkClient):
    """Speaks for one Matrix user (puppet or own login) in XMPP conversations."""

    def __init__(self, connector: XMPPConnector, identity: Identity, display_name: str) -> None:
        self.connector = connector
        self.identity = identity
        self.display_name = display_name

    async def handle_matrix_message(self, msg: MatrixMessage) -> SentMessage:
        return await self.connector.messages_out.send_message(self.identity, msg)

    async def handle_matrix_edit(self, edit: MatrixEdit) -> SentMessage | None:
        return await self.connector.messages_out.send_edit(self.identity, edit)

    async def handle_matrix_redaction(self, redaction: MatrixRedaction) -> None:
        await self.connector.messages_out.send_redaction(self.identity, redaction)

    async def handle_matrix_reaction(self, reaction: MatrixReaction) -> SentMessage:
        return await self.connector.messages_out.send_reaction(self.identity, reaction)

    async def handle_matrix_reaction_remove(self, removal: MatrixReactionRemove) -> None:
        await self.connector.messages_out.send_reaction_remove(self.identity, removal)

    async def handle_matrix_typing(self, typing: MatrixTyping) -> None:
        await self.connector.messages_out.send_typing(self.identity, typing)

    async def handle_matrix_receipt(self, receipt: MatrixReceipt) -> None:
        await self.connector.messages_out.send_receipt(self.identity, receipt)

    async def handle_matrix_membership(self, change: MatrixMembership) -> None:
        await self.connector.messages_out.handle_membership(self.identity, change)

    async def handle_matrix_power_level(self, change: MatrixPowerLevel) -> None:
        await self.connector.ranks.set_level(self.identity, change)

    async def handle_matrix_room_meta(self, change: MatrixRoomMeta) -> None:
        await self.connector.messages_out.send_room_meta(self.identity, change)

    async def handle_matrix_presence(self, presence: str, status: str | None) -> None:
        await self.connector.messages_out.send_presence(self.identity, presence, status)

    async def handle_matrix_profile(self, change: MatrixProfile) -> None:
        await self.connector.profiles.handle_profile(self.identity, change)


class XMPPConnector(NetworkConnector):
    name = "xmpp"
    migrations = MIGRATIONS
    display_name = "XMPP"
    example_config = "connectors/xmpp/config.py"
    login_help = "<jid> <password> — use your own XMPP account instead of a bridge puppet"

    def __init__(self, bridge: BridgeAPI, config: Mapping[str, Any]) -> None:
        super().__init__(bridge, config)
        self.cfg: XMPPConfig = parse_config(config)
        self.mapper = JidMapper(self.cfg.domain, self.cfg.resource)
        self.ids = IdStore()
        self.avatars = AvatarStore()
        self.rooms: dict[str, MucRoom] = {}
        self.puppets: dict[str, Identity] = {}
        self.sessions: dict[str, LoginSession] = {}
        self.display_names: dict[str, str] = {}
        self.known_dms: set[PortalKey] = set()
        self.presence: dict[str, tuple[str | None, str | None, bool]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.inbox = SerialInbox(self.log)
        self._ping_task: asyncio.Task[None] | None = None
        self.stopping = False
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
        # The parts of the connector, each in the module named after it.
        self.joins = MucJoins(self)
        self.presence_in = PresenceIn(self)
        self.messages_in = MessagesIn(self)
        self.messages_out = MessagesOut(self)
        self.profiles = Profiles(self)
        self.history = History(self)
        self.ranks = Ranks(self)
        self.pep = PepAvatars(self)
        self.roster = Roster(self)
        self.component_xmpp.prefilter = self._wanted
        self.component.on_ready.append(self._component_ready)
        self.component.on_lost.append(lambda: self._stream_lost(self.component))
        self._install_handlers(self.component)
        self._install_disco()
        self.profiles.install_vcard()
        self.pep.install()

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
        self.stopping = False
        db = None
        with contextlib.suppress(Exception):
            db = self.bridge.database()
        self.ids = IdStore(db)
        await self.ids.setup()
        self.avatars = AvatarStore(db)
        await self.avatars.setup()
        self.roster = Roster(self, db)
        await self.roster.setup()
        try:
            for portal in await self.bridge.portals(NETWORK):
                if portal.receiver:
                    self.known_dms.add(portal)
                elif parse_room_jid(portal.remote_id) is not None:
                    self.room_for(JID(portal.remote_id))
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
        self._ping_task = asyncio.create_task(self.joins.self_ping_loop(), name="xmpp-self-ping")

    async def connection_states(self) -> list[RemoteConnection]:
        """ConnectionReporting: the component's stream and each login's own."""
        streams = [self.component, *(s.identity.stream for s in self.sessions.values())]
        states = [st.connection_state for st in streams]
        return [RemoteConnection(NETWORK, st) for st in states if st is not None]

    async def stop(self) -> None:
        self.stopping = True
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
        self.roster.goodbye()
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
        await self.roster.flush()

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- identities -----------------------------------------------------------------------------

    def puppet(self, user_id: str) -> Identity:
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
        return self.puppet(user_id)

    async def user_display_name(self, user_id: str) -> str:
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

    def room_for(self, jid: JID) -> MucRoom:
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
        self.room_for(room).name = name
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
        room = self.room_for(jid)
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
            self.spawn(self.joins.join_or_notify(room, self.identity_for(member.user_id), portal))

    async def portal_closed(self, portal: PortalKey) -> None:
        if portal.receiver:
            self.known_dms.discard(portal)
            return
        room = self.rooms.pop(portal.remote_id, None)
        if room is None:
            return
        for occ in room.ours.values():
            occ.wanted = False
            self.joins.send_leave(occ, "Portal closed")

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
        if not jid.resource:
            identity = self.identity_for(user.user_id)
            self.pep.seen(portal, Sender(jid.bare), jid, None, identity.jid, jid)
            await self.roster.ask(identity, jid)
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
                self.joins.send_leave(occ, None)
                del room.ours[login.user_id]
                rooms.append(room)
        await session.identity.stream.stop()
        # The rooms the user was in get their puppet back.
        for room in rooms:
            self.spawn(self.joins.join_or_notify(room, self.puppet(login.user_id), None))

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
        bare = JID(jid).bare

        def on_state(state: ConnectionState | None, reason: str, auth_failed: bool) -> None:
            self.bridge.connection_changed(
                ConnectionChange(user_id, NETWORK, login_id, state, reason, auth_failed, bare)
            )

        if not check:
            stream.on_state = on_state  # else the login command answers for the first attempt
        ok = await stream.connect_once()
        if not ok and check:
            with contextlib.suppress(Exception):
                await stream.stop()
            raise ConnectorError(f"Could not log in as {jid}: {stream.last_error or 'no answer'}.")
        stream.on_state = on_state
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
                self.joins.send_leave(occ, None)
                del room.ours[user_id]
                self.spawn(self.joins.join_or_notify(room, identity, None))
        stream.start(first_attempt_done=ok)

    async def _login_ready(self, identity: Identity) -> None:
        xmpp = identity.xmpp
        xmpp.send_presence()
        with contextlib.suppress(Exception):
            await xmpp.plugin["xep_0280"].enable(timeout=5)
        await self._rejoin(identity.stream)
        await self.messages_out.flush_outbox()

    # --- stream events --------------------------------------------------------------------------

    def _install_handlers(self, stream: Stream) -> None:
        # slixmpp's "message" event only fires for messages with a body (chat states,
        # reactions, markers and retractions have none) and its "presence" event misses MUC
        # presences once the MUC plugin knows the room, so both are taken here directly.
        def on_message(msg: Any) -> None:
            self.inbox.submit(
                _conversation(msg),
                lambda: self._guard(self.messages_in.on_message(stream, msg), msg),
            )

        def on_presence(pres: Any) -> None:
            self.inbox.submit(
                _conversation(pres),
                lambda: self._guard(self.presence_in.on_presence(stream, pres), pres),
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

    async def emit(self, event: RemoteEvent) -> bool:
        try:
            await self.bridge.emit(event)
        except Exception:
            self.log.exception("emit failed for %s", type(event).__name__)
            return False
        return True

    async def notify(self, user_id: str, text: str, portal: PortalKey | None = None) -> None:
        try:
            await self.bridge.notify(user_id, text, portal)
        except Exception:
            self.log.exception("could not notify %s: %s", user_id, text)

    async def _component_ready(self) -> None:
        self.messages_out.outage_notified.clear()
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
        await self.messages_out.flush_outbox()
        await self.roster.announce(skip=set(self.presence))

    async def _send_initial_presence(self) -> None:
        for user_id, (show, status, offline) in list(self.presence.items()):
            ident = self.puppets.get(user_id)
            if ident is not None and not offline:
                self.messages_out.broadcast_presence(ident, show, status, offline)

    async def _rejoin(self, stream: Stream) -> None:
        jobs = []
        for room in list(self.rooms.values()):
            for occ in list(room.ours.values()):
                if occ.identity.stream is stream and occ.wanted and occ.state != "joined":
                    jobs.append(self.joins.join_or_notify(room, occ.identity, None))
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

    # --- incoming stanzas: the cheap first look -------------------------------------------------

    def _wanted(self, tag: str, attrib: dict[str, str]) -> int:
        """Whether a stanza from the component stream is worth parsing, from its top-level
        tag and attributes. Of the copies a MUC sends to each of the bridge's occupants, only
        the first copy of each groupchat message (:meth:`MucRoom.claim`) and the listener's
        copy of presences are used, plus each occupant's own presence; the others are dropped
        before they are built. Anything unusual (errors, unknown rooms or addresses, other
        stanza types) is kept for the full handlers."""
        frm = attrib.get("from")
        if not frm or attrib.get("type") == "error":
            return KEEP
        bare, _, nick = frm.partition("/")
        room = self.rooms.get(bare)
        if room is None:
            return KEEP
        to = attrib.get("to", "")
        if tag in _MESSAGE_TAGS and attrib.get("type") == "groupchat":
            if room.ours.by_jid.get(to) is None:
                return KEEP
            return KEEP if room.claim(frm, attrib.get("id"), to) else DROP
        listener = room.listener()
        if listener is None or listener.identity.jid_str == to:
            return KEEP
        occ = room.ours.by_jid.get(to)
        if occ is None:
            return KEEP
        if tag in _MESSAGE_TAGS:
            return KEEP
        if tag in _PRESENCE_TAGS:
            if nick and (nick == occ.nick or nick == occ.pending_nick):
                return KEEP  # its own presence (joined, left, kicked, renamed)
            # While it joins, the room may give it another nick (status 110 and 210).
            return KEEP_IF_SELF if occ.state == "joining" else DROP
        return KEEP

    # --- history (XEP-0313) -------------------------------------------------------------------

    async def fetch_history(self, portal: PortalKey, limit: int) -> list[RemoteMessage]:
        return await self.history.fetch_history(portal, limit)


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
