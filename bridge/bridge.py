"""The core: wires the appservice API, the database, the homeserver client and the
connectors together, and implements what connectors see of it (``BridgeAPI``)."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from mautrix.util.async_db import Database

from .appservice.connector_routes import add_connector_routes
from .appservice.media_links import MediaLinks
from .appservice.provisioning import ProvisioningAPI
from .appservice.server import AppserviceServer
from .config import BridgeConfig
from .connection_status import ConnectionStatus, LoginStatus
from .connector import (
    Attachment,
    ConnectionChange,
    ConnectorError,
    GhostKey,
    Login,
    MatrixUser,
    Namespace,
    NetworkConnector,
    PortalKey,
    RemoteEvent,
)
from .connector.capabilities import LoginCapable, RoomKeys, ThirdPartyLookup
from .connectors_loader import enabled_sections, load_connector_classes
from .content import avatar_name, sniff_image
from .credentials import CredentialBox
from .crypto import RoomCrypto
from .db import (
    GhostStore,
    MessageStore,
    PendingEvent,
    PortalStore,
    TransactionStore,
    UserStore,
    open_database,
)
from .encryption_required import EncryptionRequirement
from .matrix.homeserver import Homeserver, MatrixError
from .memory import release_freed_memory
from .metrics import INTERNAL_ERROR, create_metrics
from .ordered_queue import OrderedQueues
from .portals import PortalManager
from .status import Status

if TYPE_CHECKING:
    from .scale.core import ScaleCore

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
        # Namespace.network -> set once its connector has started: Matrix events of a network
        # wait for it (the homeserver pushes transactions as soon as we listen).
        self._started: dict[str, asyncio.Event] = {}
        self._stopping = asyncio.Event()
        self._display_names: dict[str, str] = {}
        self._db: Database | None = None
        self._stores: dict[type, Any] = {}
        self._aside_tasks: set[asyncio.Future[None]] = set()
        self.replayed_events: set[str] = set()
        self.server: AppserviceServer | None = None
        self.crypto: RoomCrypto | None = None
        self.portal_mgr = PortalManager(self)
        self.metrics = create_metrics(cfg.metrics.enabled, self.log.getChild("metrics"))
        self.hs.observe = self.metrics.homeserver_request
        self.status = Status(self)
        self.connections = ConnectionStatus(
            self._tell_connection, self._connection_name, self._relogin_hint
        )
        from .double_puppet import DoublePuppets

        self.double_puppets = DoublePuppets(self)
        from .commands import CommandProcessor
        from .matrix_to_remote import MatrixHandler
        from .remote_to_matrix import RemoteHandler

        self.matrix_handler = MatrixHandler(self)
        self.encryption_required = EncryptionRequirement(self)
        self.remote_handler = RemoteHandler(self)
        self.commands = CommandProcessor(self)
        # Scale-out mode: connectors are proxies of the workers' (docs/scale-out.md).
        self.scale: ScaleCore | None = None
        if cfg.scale.enabled:
            from .scale.core import ScaleCore as _ScaleCore

            self.scale = _ScaleCore(cfg.scale, self.log.getChild("scale"))

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
        return self._store(MessageStore)  # one: it holds the rows written behind

    @property
    def transactions(self) -> TransactionStore:
        # One: it holds the deletions not written yet; its trips carry the rows written behind.
        store = self._stores.get(TransactionStore)
        if store is None or store.db is not self.db:
            store = TransactionStore(self.db, rider=self.messages.take)
            self._stores[TransactionStore] = store
        return store

    # --- lifecycle ------------------------------------------------------------------

    def load_connectors(self) -> None:
        classes = load_connector_classes(self.cfg)
        sections = enabled_sections(self.cfg)
        for name, cls in classes.items():
            connector = cls(self, sections[name])
            if self.scale is not None:
                connector = self.scale.proxy(connector)  # the real one runs on a worker
            self.connectors[name] = connector
            started = asyncio.Event()
            for ns in connector.namespaces():
                if ns.network in self.networks:
                    raise StartupError(f"two connectors claim the network id {ns.network!r}")
                self.networks[ns.network] = (connector, ns)
                self._started[ns.network] = started

    async def start(self) -> None:
        if not self.connectors:
            self.load_connectors()
        self._stopping.clear()
        for gate in self._started.values():
            gate.clear()
        self.status.reset()
        if self.scale is not None:
            from .scale.bus import BusUnavailable

            try:
                await self.scale.connect()
            except BusUnavailable as e:
                raise StartupError(str(e)) from None
        self._db = await open_database(
            self.cfg.database, self.log.getChild("db"), self.connectors.values()
        )
        self.metrics.instrument_database(self._db)
        await self.hs.open()
        # Events recorded before a crash or stop, not processed yet: queued before we listen,
        # so that the homeserver's new events of a room come after them. They run once their
        # network's connector has started.
        pending = await self.transactions.pending()
        # Only these may have been bridged already (a crash between sending and marking done).
        self.replayed_events = {str(pe.event.get("event_id")) for pe in pending}
        if pending:
            self.log.info("%d events left from the last run are queued", len(pending))
            await self.handle_pending(pending)
        self.server = AppserviceServer(
            self.cfg.hs_token, self.transactions, self, self.log.getChild("appservice")
        )
        self.server.on_transaction = self.metrics.transaction
        self.status.add_routes(self.server.app)
        if self.cfg.encryption.allow:
            self._make_crypto(self.server)
        self.media_links.session = self.hs.session
        self.media_links.add_routes(self.server.app)
        if self.cfg.provisioning.enabled:
            api = ProvisioningAPI(self, self.cfg.provisioning, self.log.getChild("provisioning"))
            api.add_routes(self.server.app)
        add_connector_routes(self.server.app, self.connectors.values(), self.log.getChild("http"))
        try:
            await self.server.start(self.cfg.hostname, self.cfg.port)
        except OSError as e:
            raise StartupError(
                f"cannot listen on {self.cfg.hostname}:{self.cfg.port}: {e.strerror}"
            ) from e
        await self._serve_metrics()
        await self._wait_for_homeserver()
        self.status.homeserver_reached = True
        await self._start_crypto()
        try:
            await self.hs.set_displayname(self.cfg.bot_mxid, self.cfg.bot_displayname)
        except MatrixError as e:
            self.log.warning("could not set the bot's display name: %s", e)
        await self.encryption_required.at_start()
        await self._hand_room_keys()
        for name, connector in self.connectors.items():
            await connector.start()
            self.status.connectors_started.add(name)
            for ns in connector.namespaces():
                self._started[ns.network].set()
        await self.matrix_handler.resume_waiting()
        if self.scale is not None:
            await self.scale.start_intake(
                self.submit_remote, self.link_room, self.save_room_key, self.connection_changed
            )
        self.log.info("bridge started with %s", ", ".join(self.networks) or "no networks")
        release_freed_memory()

    async def _hand_room_keys(self) -> None:
        """Keys of portals joined with one (``join <network> <room> <key>``), for rejoins.
        In scale-out mode the workers read them themselves when they start a connector."""
        if self.scale is not None:
            return
        if not any(isinstance(c, RoomKeys) for c in self.connectors.values()):
            return
        for portal in await self.portal_store.all():
            if "room_key" not in portal.metadata or portal.key.network not in self.networks:
                continue
            connector = self.connector_of(portal.key.network)
            key = self.commands.actions.room_key_of(portal)
            if isinstance(connector, RoomKeys) and key is not None:
                connector.set_room_key(portal.key, key)

    async def _serve_metrics(self) -> None:
        if not self.cfg.metrics.enabled:
            return
        self.metrics.sources = self.status.metric_sources()
        host, port = self.cfg.metrics.host, self.cfg.metrics.port
        try:
            await self.metrics.serve(host, port)
        except OSError as e:
            raise StartupError(
                f"metrics.listen: cannot listen on {host}:{port}: {e.strerror}"
            ) from e

    def _make_crypto(self, server: AppserviceServer) -> None:
        from .crypto.olm import OlmCrypto

        self.crypto = OlmCrypto(
            self.db, self.hs, self.credentials, self.is_bridge_user, self.log.getChild("crypto")
        )
        # From now on: what comes in or goes out before start() finishes waits for it, so
        # nothing is sent in clear into an encrypted room meanwhile.
        server.crypto = self.hs.crypto = self.crypto

    async def _start_crypto(self) -> None:
        if self.crypto is None:
            return
        from .crypto.olm import CryptoStartupError

        try:
            await self.crypto.start()
        except CryptoStartupError as e:
            raise StartupError(str(e)) from e

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
        # Events still waiting for a connector that never started stay recorded for next time.
        self._stopping.set()
        if self.server:
            await self.server.stop()
        if self.scale is not None:
            await self.scale.stop_intake()
        self.matrix_handler.stop_waiting()
        await self.commands.close()
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
        self.connections.close()
        try:
            await self.messages.close()
        except Exception as e:  # their events stay pending: bridged again at the next start
            self.log.warning("could not store the last message mappings: %s", e)
        if self._aside_tasks:  # the stream's acks of the events whose mappings were stored
            await asyncio.wait(self._aside_tasks, timeout=5.0)
        try:
            await self.transactions.close()
        except Exception as e:  # still pending: replayed, and recognised, at the next start
            self.log.warning("could not mark the last handled events done: %s", e)
        if self.scale is not None:
            await self.scale.close()
        if self.crypto is not None:
            await self.crypto.stop()
            self.crypto = None
        self.hs.crypto = None
        await self.metrics.close()
        await self.hs.close()
        if self._db:
            await self._db.stop()
            self._db = None

    async def until_started(self, network: str | None) -> bool:
        """Wait until the connector of ``network`` (of every network for None, or for a
        network no connector serves) has started; False if the bridge stops first."""
        gate = self._started.get(network) if network else None
        gates = [gate] if gate else list(self._started.values())
        for g in gates:
            if g.is_set():
                continue
            waits = [asyncio.ensure_future(g.wait()), asyncio.ensure_future(self._stopping.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if self._stopping.is_set():
                return False
        return not self._stopping.is_set()

    def all_started(self) -> bool:
        return all(g.is_set() for g in self._started.values())

    # --- identifiers ----------------------------------------------------------------

    def network_of(self, network: str) -> tuple[NetworkConnector, Namespace]:
        return self.networks[network]

    def connector_of(self, network: str) -> NetworkConnector:
        entry = self.networks.get(network)
        if entry is None:  # a portal of a connector no longer configured
            raise ConnectorError(f"no connector serves the network {network!r} any more")
        return entry[0]

    def ghost_user_id(self, network: str, remote_id: str) -> str:
        connector, ns = self.networks[network]
        return f"@{ns.prefix}{connector.ghost_localpart(network, remote_id)}:{self.domain}"

    def alias_of(self, key: PortalKey) -> str:
        connector, ns = self.networks[key.network]
        return f"#{ns.prefix}{connector.alias_localpart(key.network, key.remote_id)}:{self.domain}"

    def portal_key(self, network: str, remote_id: str) -> PortalKey | None:
        """The key of a shared room a user named, in the connector's canonical form (``#Chan``
        and ``#chan`` are one portal on IRC); None when the name is no room of the network."""
        canonical = self.connector_of(network).canonical_room_id(network, remote_id)
        return PortalKey(network, canonical) if canonical else None

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
        self.submit_remote(event)

    def submit_remote(
        self, event: RemoteEvent, done: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Queue a remote event behind the others of its portal; ``done`` is awaited once it
        was handled (bridged, or its failure told), not when the bridge stops first."""
        self.metrics.remote_received(event)

        async def job() -> None:
            await self._remote_job(event)
            if done is not None:
                # Done (acknowledged to the stream) once the id mapping is stored, which is
                # written behind: waited for aside, so the portal's next event need not.
                self._aside(self._done_when_stored(done))

        async def failed(error: Exception) -> None:
            await self.remote_handler.failed(event, error)
            if done is not None:
                await done()

        self.queues.submit(("remote", event.portal), job, failed)

    async def _done_when_stored(self, done: Callable[[], Awaitable[None]]) -> None:
        await self.messages.stored()
        await done()

    def _aside(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._aside_tasks.add(task)
        task.add_done_callback(self._aside_tasks.discard)

    async def _remote_job(self, event: RemoteEvent) -> None:
        try:
            await self.remote_handler.handle(event)
        finally:
            self.metrics.remote_finished(event)

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

    def connection_changed(self, change: ConnectionChange) -> None:
        self.connections.update(change)

    def _tell_connection(self, user_id: str, text: str) -> None:
        if self._stopping.is_set():
            return  # the bridge closing its connections is no news to the user
        self.queues.submit(("notice", user_id), lambda: self.notify(user_id, text))

    def _connection_name(self, st: LoginStatus) -> str:
        entry = self.networks.get(st.network)
        if entry is None:
            where = st.network
        elif st.network == entry[0].name:
            where = entry[0].display_name  # the connector's only network
        else:
            where = entry[1].description
        return f"Your connection to {where}" + (f" as {st.remote_name}" if st.remote_name else "")

    def _relogin_hint(self, st: LoginStatus) -> str:
        entry = self.networks.get(st.network)
        connector = entry[0] if entry else None
        if isinstance(connector, LoginCapable):
            return f"Log in again: `login {connector.name} ...` (`help` shows how)."
        return "Ask the bridge admin to check the credentials."

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

    def display_name_of(self, user_id: str) -> str:
        """The name notices address a user by: the display name seen last, else the id."""
        return self._display_names.get(user_id, user_id)

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

    async def link_room(self, user_id: str, room_id: str, portal: PortalKey) -> None:
        from .actions import Refused, UserActions  # actions builds on the Bridge

        user = await self.matrix_user(user_id)
        try:
            await UserActions(self).link(user, portal.network, portal.remote_id, room_id)
        except Refused as e:
            raise ConnectorError(str(e)) from None

    async def save_room_key(self, portal: PortalKey, key: str | None) -> None:
        p = await self.portal_store.get(portal)
        if p is None or self.commands.actions.room_key_of(p) == (key or None):
            return
        if key:
            p.metadata["room_key"] = self.credentials.seal({"key": key})
        else:
            p.metadata.pop("room_key", None)
        await self.portal_store.save(p)

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
            self.metrics.matrix_received(str(pe.event.get("event_id")))
            self.queues.submit(key, self._job(pe), self._failed(pe.event))

    async def _until_room_ready(self, room_id: str) -> bool:
        """Wait for the connector of the room's portal (of all, for other rooms: commands
        and invites may name any network); False if the bridge stops first."""
        if self.all_started():
            return not self._stopping.is_set()
        portal = await self.portal_store.by_room(room_id)
        return await self.until_started(portal.key.network if portal else None)

    def _job(self, pe: PendingEvent) -> Any:
        async def run() -> None:
            if not await self._until_room_ready(pe.room_id):
                return  # stopping: still pending, replayed at the next start
            keep = False
            try:
                await self.matrix_handler.handle(pe.event)
            except asyncio.CancelledError:
                # Scale-out mode, stopping while it waits for a worker: still pending, replayed
                # at the next start (the worker dedups what it already performed).
                keep = self.scale is not None
                raise
            finally:
                if not keep:
                    self.transactions.handled(pe.seq)  # deleted with the next transaction
                    self.metrics.matrix_finished(str(pe.event.get("event_id")))

        return run

    def _failed(self, evt: dict[str, Any]) -> Any:
        async def tell(error: Exception) -> None:
            await self.matrix_handler.tell_failure(
                evt, "an internal error in the bridge", INTERNAL_ERROR
            )

        return tell

    async def handle_ephemeral(self, events: list[dict[str, Any]]) -> None:
        for evt in events:
            room_id = evt.get("room_id")
            if isinstance(room_id, str):
                self.queues.submit(("ephemeral", room_id), self._ephemeral_job(evt))
            else:
                await self.matrix_handler.handle_ephemeral(evt)

    def _ephemeral_job(self, evt: dict[str, Any]) -> Any:
        async def run() -> None:
            if await self._until_room_ready(str(evt.get("room_id"))):
                await self.matrix_handler.handle_ephemeral(evt)

        return run

    async def query_user(self, user_id: str) -> bool:
        ghost = self.parse_ghost(user_id)
        if ghost is None or not await self.until_started(ghost.network):
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
        if key is None or not await self.until_started(key.network):
            return False
        try:
            portal = await self.portal_mgr.open_portal(key, None, invite_user=False)
        except Exception:
            self.log.exception("opening a portal for %s failed", alias)
            return False
        if portal is None:
            return False
        shared = not (portal.plumbed or portal.is_direct)
        if alias != self.alias_of(key) and portal.room_id and shared:
            # Another spelling of the portal's alias (``#Chan`` for ``#chan``): the homeserver
            # looks up the alias it asked about, so that one has to lead to the room too.
            return await self._publish_alias(alias, portal.room_id)
        return True

    async def _publish_alias(self, alias: str, room_id: str) -> bool:
        try:
            await self.hs.create_alias(alias, room_id)
        except MatrixError as e:
            if e.status == 409 or e.errcode == "M_ROOM_IN_USE":
                return True  # published meanwhile by a concurrent query
            self.log.warning("could not publish %s for %s: %s", alias, room_id, e)
            return False
        return True

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
            key = self.portal_key(fields["network"], fields["room"])
            keys = [key] if key else []
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
