"""The core: wires the appservice API, the database, the homeserver client and the
connectors together, and implements what connectors see of it (``BridgeAPI``)."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from typing import Any

from mautrix.util.async_db import Database

from .appservice.connector_routes import add_connector_routes
from .appservice.media_links import MediaLinks
from .appservice.server import AppserviceServer
from .config import BridgeConfig
from .connector import (
    Attachment,
    ConnectorError,
    GhostKey,
    Login,
    MatrixUser,
    Namespace,
    NetworkConnector,
    PortalKey,
    RemoteEvent,
)
from .connector.capabilities import ThirdPartyLookup
from .connectors_loader import enabled_sections, load_connector_classes
from .content import avatar_name, sniff_image
from .credentials import CredentialBox
from .db import (
    GhostStore,
    MessageStore,
    PendingEvent,
    PortalStore,
    TransactionStore,
    UserStore,
    open_database,
)
from .matrix.homeserver import Homeserver, MatrixError
from .ordered_queue import OrderedQueues
from .portals import PortalManager

STOP_DRAIN_SECONDS = 15.0


class StartupError(Exception):
    """The bridge cannot start (homeserver misconfigured, port taken...)."""


class Bridge:
    def __init__(self, cfg: BridgeConfig, log: logging.Logger | None = None) -> None:
        self.cfg = cfg
        self.domain = cfg.domain
        self.log = log or logging.getLogger("mimi")
        self.hs = Homeserver(cfg.hs_address, cfg.domain, cfg.as_token, cfg.bot_mxid, self.log)
        self.credentials = CredentialBox(cfg.credentials_key)
        self.media_links = MediaLinks(
            cfg.public_address or cfg.as_address,
            cfg.hs_address,
            cfg.as_token,
            cfg.hs_token,
            lifetime_s=int(cfg.media_link_lifetime_days * 86400),
            max_bytes=int(cfg.media_link_max_size_mb * 1024 * 1024),
        )
        self.queues = OrderedQueues(self.log.getChild("queue"))
        self.connectors: dict[str, NetworkConnector] = {}
        # Namespace.network -> (connector, namespace)
        self.networks: dict[str, tuple[NetworkConnector, Namespace]] = {}
        self._display_names: dict[str, str] = {}
        self._db: Database | None = None
        self._stores: dict[type, Any] = {}
        self.replayed_events: set[str] = set()
        self.server: AppserviceServer | None = None
        self.portal_mgr = PortalManager(self)
        from .commands import CommandProcessor
        from .matrix_to_remote import MatrixHandler
        from .remote_to_matrix import RemoteHandler

        self.matrix_handler = MatrixHandler(self)
        self.remote_handler = RemoteHandler(self)
        self.commands = CommandProcessor(self)

    # --- stores ---------------------------------------------------------------------

    @property
    def db(self) -> Database:
        assert self._db is not None, "bridge not started"
        return self._db

    def database(self) -> Database:
        return self.db

    @property
    def portal_store(self) -> PortalStore:
        return self._store(PortalStore)

    @property
    def ghosts(self) -> GhostStore:
        return self._store(GhostStore)

    @property
    def users(self) -> UserStore:
        return self._store(UserStore)

    def _store(self, cls: Any) -> Any:
        """One instance per store and database: the portal, ghost and management-room stores
        keep the rows every event looks up in memory."""
        store = self._stores.get(cls)
        if store is None or store.db is not self.db:
            store = self._stores[cls] = cls(self.db)
        return store

    @property
    def messages(self) -> MessageStore:
        return MessageStore(self.db)

    @property
    def transactions(self) -> TransactionStore:
        return TransactionStore(self.db)

    # --- lifecycle ------------------------------------------------------------------

    def load_connectors(self) -> None:
        classes = load_connector_classes(self.cfg)
        sections = enabled_sections(self.cfg)
        for name, cls in classes.items():
            connector = cls(self, sections[name])
            self.connectors[name] = connector
            for ns in connector.namespaces():
                if ns.network in self.networks:
                    raise StartupError(f"two connectors claim the network id {ns.network!r}")
                self.networks[ns.network] = (connector, ns)

    async def start(self) -> None:
        if not self.connectors:
            self.load_connectors()
        self._db = await open_database(self.cfg.database, self.log.getChild("db"))
        await self.hs.open()
        self.server = AppserviceServer(
            self.cfg.hs_token, self.transactions, self, self.log.getChild("appservice")
        )
        self.media_links.session = self.hs.session
        self.media_links.add_routes(self.server.app)
        add_connector_routes(self.server.app, self.connectors.values(), self.log.getChild("http"))
        try:
            await self.server.start(self.cfg.hostname, self.cfg.port)
        except OSError as e:
            raise StartupError(
                f"cannot listen on {self.cfg.hostname}:{self.cfg.port}: {e.strerror}"
            ) from e
        await self._wait_for_homeserver()
        try:
            await self.hs.set_displayname(self.cfg.bot_mxid, self.cfg.bot_displayname)
        except MatrixError as e:
            self.log.warning("could not set the bot's display name: %s", e)
        for connector in self.connectors.values():
            await connector.start()
        # Events recorded before a crash or stop, not processed yet.
        pending = await self.transactions.pending()
        # Only these may have been bridged already (a crash between sending and marking done).
        self.replayed_events = {str(pe.event.get("event_id")) for pe in pending}
        if pending:
            self.log.info("processing %d events left from the last run", len(pending))
            await self.handle_pending(pending)
        self.log.info("bridge started with %s", ", ".join(self.networks) or "no networks")

    async def _wait_for_homeserver(self) -> None:
        """Ping the homeserver through itself back to us: proves the URL and both tokens.
        Retries while it is unreachable; a misconfiguration stops start-up."""
        delay = 1.0
        while True:
            try:
                ms = await self.hs.ping(self.cfg.appservice_id, f"mimi-startup-{uuid.uuid4()}")
                self.log.info("homeserver reached us back in %d ms", ms)
                return
            except MatrixError as e:
                if e.errcode in ("M_FORBIDDEN", "M_UNKNOWN_TOKEN"):
                    raise StartupError(
                        f"homeserver refused the as_token ({e.errcode}): is the registration"
                        " file loaded by the homeserver and appservice.id"
                        f" {self.cfg.appservice_id!r} right?"
                    ) from e
                if e.errcode in ("M_BAD_STATUS", "M_URL_NOT_SET"):
                    raise StartupError(
                        f"homeserver could not use appservice.address ({e.errcode}: {e}): "
                        "check the url and hs_token in the registration"
                    ) from e
                if e.errcode == "M_UNRECOGNIZED":
                    self.log.warning("homeserver has no appservice ping; skipping the check")
                    return
                reason = str(e)
            except Exception as e:  # connection refused, DNS, timeouts
                reason = f"{type(e).__name__}: {e}"
            self.log.warning("homeserver not reachable (%s); retrying in %.0f s", reason, delay)
            await asyncio.sleep(delay + random.uniform(0, delay / 4))
            delay = min(delay * 2, 30.0)

    async def stop(self) -> None:
        if self._db is None:
            return  # never started, or stopped already
        if self.server:
            await self.server.stop()
        # Events already acknowledged to the homeserver are finished before the connectors
        # go (cancelled half-way, a sent message would lose its id mapping for good).
        try:
            await asyncio.wait_for(self.queues.drain(), STOP_DRAIN_SECONDS)
        except TimeoutError:
            self.log.warning("stopping with events still being bridged")
        for connector in self.connectors.values():
            try:
                await connector.stop()
            except Exception:
                self.log.exception("connector %s did not stop cleanly", connector.name)
        await self.queues.close()
        await self.hs.close()
        if self._db:
            await self._db.stop()
            self._db = None

    # --- identifiers ----------------------------------------------------------------

    def network_of(self, network: str) -> tuple[NetworkConnector, Namespace]:
        return self.networks[network]

    def connector_of(self, network: str) -> NetworkConnector:
        return self.networks[network][0]

    def ghost_user_id(self, network: str, remote_id: str) -> str:
        connector, ns = self.networks[network]
        return f"@{ns.prefix}{connector.ghost_localpart(network, remote_id)}:{self.domain}"

    def alias_of(self, key: PortalKey) -> str:
        connector, ns = self.networks[key.network]
        return f"#{ns.prefix}{connector.alias_localpart(key.network, key.remote_id)}:{self.domain}"

    def _split(self, mxid: str, sigil: str) -> str | None:
        if not mxid.startswith(sigil) or ":" not in mxid:
            return None
        localpart, server = mxid[1:].split(":", 1)
        return localpart if server == self.domain else None

    def parse_ghost(self, user_id: str) -> GhostKey | None:
        localpart = self._split(user_id, "@")
        if localpart is None:
            return None
        for network, (connector, ns) in self._by_prefix():
            if localpart.startswith(ns.prefix):
                remote = connector.parse_ghost_localpart(network, localpart[len(ns.prefix) :])
                return GhostKey(network, remote) if remote is not None else None
        return None

    def parse_alias(self, alias: str) -> PortalKey | None:
        localpart = self._split(alias, "#")
        if localpart is None:
            return None
        for network, (connector, ns) in self._by_prefix():
            if localpart.startswith(ns.prefix):
                remote = connector.parse_alias_localpart(network, localpart[len(ns.prefix) :])
                return PortalKey(network, remote) if remote is not None else None
        return None

    def _by_prefix(self) -> list[tuple[str, tuple[NetworkConnector, Namespace]]]:
        # Longest prefix first, so "irc_libera_" wins over a hypothetical "irc_".
        return sorted(self.networks.items(), key=lambda kv: -len(kv[1][1].prefix))

    def is_bridge_user(self, user_id: str) -> bool:
        if user_id == self.cfg.bot_mxid:
            return True
        localpart = self._split(user_id, "@")
        return localpart is not None and any(
            localpart.startswith(ns.prefix) for _, ns in self.networks.values()
        )

    # --- BridgeAPI ------------------------------------------------------------------

    async def emit(self, event: RemoteEvent) -> None:
        self.queues.submit(("remote", event.portal), lambda: self.remote_handler.handle(event))

    async def notify(self, user_id: str, text: str, portal: PortalKey | None = None) -> None:
        room_id = None
        if portal is not None:
            p = await self.portal_store.get(portal)
            room_id = p.room_id if p else None
        if room_id is None:
            room_id = await self.management_room(user_id)
        if room_id is None:
            self.log.warning("cannot tell %s (no room): %s", user_id, text)
            return
        await self.send_notice(room_id, text)

    async def send_notice(self, room_id: str, text: str) -> None:
        # DMs opened by inviting a ghost do not hold the bot: their ghost speaks instead.
        portal = await self.portal_store.by_room(room_id)
        sender = portal.metadata.get("notice_sender") if portal else None
        try:
            await self.hs.send(
                room_id,
                "m.room.message",
                {"msgtype": "m.notice", "body": text},
                txn_id=f"mimi.notice.{uuid.uuid4().hex}",
                as_user=sender if isinstance(sender, str) else None,
            )
        except MatrixError as e:
            self.log.warning("could not send a notice to %s: %s (%s)", room_id, e, text)

    async def management_room(self, user_id: str) -> str | None:
        room = await self.users.management_room(user_id)
        if room:
            return room
        # Open a DM with the user: never leave a failure untold.
        try:
            room = await self.hs.create_room(
                {
                    "preset": "trusted_private_chat",
                    "is_direct": True,
                    "invite": [user_id],
                    "name": "mimi-bridge",
                }
            )
        except MatrixError as e:
            self.log.warning("could not open a management room with %s: %s", user_id, e)
            return None
        await self.users.set_management_room(user_id, room)
        return room

    def permission_of(self, user_id: str) -> str | None:
        return self.cfg.permission_of(user_id)

    def remember_display_name(self, user_id: str, name: str | None) -> None:
        if name:
            self._display_names[user_id] = name

    async def matrix_user(self, user_id: str) -> MatrixUser:
        name = self._display_names.get(user_id)
        if name is None:
            try:
                profile = await self.hs.profile(user_id)
            except MatrixError as e:
                raise ConnectorError(f"cannot look up {user_id}: {e}") from e
            if profile is None:
                raise ConnectorError(f"no such Matrix user: {user_id}")
            name = str(profile.get("displayname") or user_id[1:].split(":", 1)[0])
            self._display_names[user_id] = name
        return MatrixUser(user_id, name, self.permission_of(user_id) or "none")

    async def matrix_avatar(self, user_id: str) -> Attachment | None:
        try:
            profile = await self.hs.profile(user_id)
            url = (profile or {}).get("avatar_url")
            if not (isinstance(url, str) and url.startswith("mxc://")):
                return None
            data = await self.hs.download(url, 10 * 1024 * 1024)
        except MatrixError as e:
            self.log.warning("avatar of %s not fetched: %s", user_id, e)
            return None
        mimetype = sniff_image(data)
        return Attachment(avatar_name(mimetype), mimetype, data=data, size=len(data), mxc=url)

    async def portals(self, network: str) -> list[PortalKey]:
        return [p.key for p in await self.portal_store.all(network) if p.room_id]

    async def portal_members(self, portal: PortalKey) -> list[MatrixUser]:
        p = await self.portal_store.get(portal)
        if p is None or p.room_id is None:
            return []
        members = await self.hs.joined_members(p.room_id)
        out = []
        for uid, name in members.items():
            if self.is_bridge_user(uid):
                continue
            self.remember_display_name(uid, name)
            out.append(MatrixUser(uid, name, self.permission_of(uid) or "none"))
        return out

    async def logins(self, network: str) -> list[Login]:
        rows = await self.users.logins(network=network)
        out = []
        for row in rows:
            try:
                creds = self.credentials.open(row.credentials)
            except Exception as e:
                self.log.error("login %s/%s: %s", row.network, row.login_id, e)
                continue
            out.append(
                Login(
                    row.network,
                    row.login_id,
                    row.user_id,
                    creds,
                    row.remote_name,
                    row.state,
                    row.meta,
                )
            )
        return out

    def mxc_to_url(self, mxc: str, filename: str = "") -> str:
        return self.media_links.url(mxc, filename)

    async def upload_text(self, text: str, filename: str) -> str:
        mxc = await self.hs.upload(text.encode("utf-8"), "text/plain; charset=utf-8", filename)
        return self.mxc_to_url(mxc, filename)

    def public_url(self, path: str) -> str:
        base = self.cfg.public_address or self.cfg.as_address
        return base.rstrip("/") + "/" + path.lstrip("/")

    # --- appservice handler ---------------------------------------------------------

    def is_own_event(self, event: dict[str, Any]) -> bool:
        sender = event.get("sender")
        return isinstance(sender, str) and self.is_bridge_user(sender)

    async def handle_own_events(self, events: list[dict[str, Any]]) -> None:
        for evt in events:
            await self.matrix_handler.handle(evt)  # bookkeeping only, no remote side effects

    async def handle_pending(self, events: list[PendingEvent]) -> None:
        for pe in events:
            key = ("matrix", pe.room_id)
            self.queues.submit(key, self._job(pe))

    def _job(self, pe: PendingEvent) -> Any:
        async def run() -> None:
            try:
                await self.matrix_handler.handle(pe.event)
            finally:
                await self.transactions.done(pe.seq)

        return run

    async def handle_ephemeral(self, events: list[dict[str, Any]]) -> None:
        for evt in events:
            room_id = evt.get("room_id")
            if isinstance(room_id, str):
                self.queues.submit(("ephemeral", room_id), self._ephemeral_job(evt))
            else:
                await self.matrix_handler.handle_ephemeral(evt)

    def _ephemeral_job(self, evt: dict[str, Any]) -> Any:
        return lambda: self.matrix_handler.handle_ephemeral(evt)

    async def query_user(self, user_id: str) -> bool:
        ghost = self.parse_ghost(user_id)
        if ghost is None:
            return False
        connector = self.connector_of(ghost.network)
        try:
            info = await connector.resolve_ghost(ghost.network, ghost.remote_id)
        except Exception:
            self.log.exception("resolving ghost %s failed", user_id)
            return False
        if info is None:
            return False
        await self.portal_mgr.ghost(ghost.network, ghost.remote_id, info.display_name)
        return True

    async def query_alias(self, alias: str) -> bool:
        key = self.parse_alias(alias)
        if key is None:
            return False
        try:
            portal = await self.portal_mgr.open_portal(key, None, invite_user=False)
        except Exception:
            self.log.exception("opening a portal for %s failed", alias)
            return False
        return portal is not None

    async def thirdparty_protocol(self, protocol: str) -> dict[str, Any] | None:
        connector = self.connectors.get(protocol)
        if connector is None:
            return None
        instances = [
            {"desc": ns.description, "network_id": ns.network, "fields": {"network": ns.network}}
            for ns in connector.namespaces()
        ]
        if isinstance(connector, ThirdPartyLookup):
            tp = connector.thirdparty_protocol()
            return {
                "user_fields": tp.user_fields,
                "location_fields": tp.location_fields,
                "field_types": tp.field_types,
                "icon": tp.icon,
                "instances": instances,
            }
        return {
            "user_fields": ["network", "user"],
            "location_fields": ["network", "room"],
            "field_types": {
                "network": {"regexp": ".+", "placeholder": "network id"},
                "user": {"regexp": ".+", "placeholder": "remote user id"},
                "room": {"regexp": ".+", "placeholder": "remote room id"},
            },
            "icon": "",
            "instances": instances,
        }

    async def thirdparty_location(
        self, protocol: str | None, fields: dict[str, str]
    ) -> list[dict[str, Any]]:
        if protocol is None:
            key = self.parse_alias(fields.get("alias", ""))
            if key is None:
                return []
            connector = self.connector_of(key.network)
            return [
                {
                    "alias": fields["alias"],
                    "protocol": connector.name,
                    "fields": {"network": key.network, "room": key.remote_id},
                }
            ]
        connector = self.connectors[protocol]
        keys: list[PortalKey] = []
        if isinstance(connector, ThirdPartyLookup):
            keys = await connector.thirdparty_locations(fields)
        elif fields.get("network") in self.networks and fields.get("room"):
            keys = [PortalKey(fields["network"], fields["room"])]
        return [
            {
                "alias": self.alias_of(k),
                "protocol": protocol,
                "fields": {"network": k.network, "room": k.remote_id},
            }
            for k in keys
            if k.network in self.networks
        ]

    async def thirdparty_user(
        self, protocol: str | None, fields: dict[str, str]
    ) -> list[dict[str, Any]]:
        if protocol is None:
            ghost = self.parse_ghost(fields.get("userid", ""))
            if ghost is None:
                return []
            connector = self.connector_of(ghost.network)
            return [
                {
                    "userid": fields["userid"],
                    "protocol": connector.name,
                    "fields": {"network": ghost.network, "user": ghost.remote_id},
                }
            ]
        connector = self.connectors[protocol]
        pairs: list[tuple[str, str]] = []
        if isinstance(connector, ThirdPartyLookup):
            pairs = await connector.thirdparty_users(fields)
        elif fields.get("network") in self.networks and fields.get("user"):
            pairs = [(fields["network"], fields["user"])]
        return [
            {
                "userid": self.ghost_user_id(n, r),
                "protocol": protocol,
                "fields": {"network": n, "user": r},
            }
            for n, r in pairs
            if n in self.networks
        ]
