"""What a Matrix user asks of the bridge: log in and out, join a portal, link and unlink a
Matrix room. The management-room commands and the provisioning API both call these, so a
login or a link has one implementation and one set of rules.

Two kinds of failure: :class:`Refused` is a rule saying no (its text is for the user as it
is, ``kind`` says which rule); a :class:`~bridge.connector.ConnectorError` is the network or
the lookup failing (commands show it after "<command> failed:")."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .connection_status import LoginStatus
from .connector import ChatInfo, ConnectorError, MatrixUser, NetworkConnector, PortalKey
from .connector.capabilities import (
    LinkConsent,
    LinkRequest,
    LoginCapable,
    LoginResult,
    Plumbing,
    RoomKeys,
)
from .db import LoginRow, Portal
from .matrix.homeserver import MatrixError

if TYPE_CHECKING:
    from .bridge import Bridge

LEVELS = {"relay": 1, "user": 2, "admin": 3}

RefusalKind = Literal["forbidden", "not_found", "conflict", "invalid"]


class Refused(Exception):
    """The bridge turns the request down; the message says why, for the user."""

    def __init__(self, message: str, kind: RefusalKind = "forbidden") -> None:
        super().__init__(message)
        self.kind: RefusalKind = kind


@dataclass(slots=True)
class Linked:
    portal: Portal
    # Said to the user after the link: what the bot could not do (set the bridge info).
    note: str = ""


@dataclass(slots=True)
class LoginView:
    """A login or a connection of the user, as ``list``, ``ping`` and the provisioning API
    show it: a stored login (``network`` names its connector) with its connection's state
    when the connector reported one, or a connection without a stored login (an automatic
    puppet: ``network`` names the network)."""

    network: str
    login_id: str
    remote_name: str
    stored_state: str  # the login row's state; "" for a connection without one
    connection: LoginStatus | None

    @property
    def state(self) -> str:
        if self.connection is not None:
            return str(self.connection.state)
        return self.stored_state

    @property
    def since(self) -> float | None:
        return self.connection.since if self.connection is not None else None

    def describe(self) -> str:
        if self.connection is not None:
            return self.connection.describe()
        return self.stored_state  # a connector that reports no connections


def allowed(user: MatrixUser, level: str) -> bool:
    return LEVELS.get(user.permission, 0) >= LEVELS[level]


class UserActions:
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    # --- lookups ----------------------------------------------------------------------

    def network_id(self, name: str) -> str:
        """A network id from what the user gave: a namespace network or a connector name
        with a single instance."""
        if name in self.bridge.networks:
            return name
        connector = self.bridge.connectors.get(name)
        if connector is not None:
            nets = [ns.network for ns in connector.namespaces()]
            if len(nets) == 1:
                return nets[0]
            raise ConnectorError(f"{name} has several networks: {', '.join(nets)}")
        known = ", ".join(sorted(self.bridge.networks)) or "none"
        raise ConnectorError(f"unknown network {name!r} (known: {known})")

    def connector_named(self, name: str) -> NetworkConnector:
        """A connector by its name, or by the id of one of its networks."""
        connector = self.bridge.connectors.get(name)
        if connector is None and name in self.bridge.networks:
            connector = self.bridge.connector_of(name)
        if connector is None:
            raise Refused(f"unknown network {name!r}", "not_found")
        return connector

    def login_connector(self, name: str) -> NetworkConnector:
        connector = self.connector_named(name)
        if not isinstance(connector, LoginCapable):
            raise Refused(
                f"{connector.display_name} has no logins; you are puppeted automatically.",
                "invalid",
            )
        return connector

    async def room_id(self, room: str) -> str:
        """A room id from an id or an alias."""
        if room.startswith("#"):
            room_id = await self.bridge.hs.resolve_alias(room)
            if room_id is None:
                raise ConnectorError(f"no room {room}")
            return room_id
        return room

    async def room_admin(self, room_id: str, user: MatrixUser) -> bool:
        if user.permission == "admin":
            return True
        if user.user_id in await self.bridge.hs.room_creators(room_id):
            return True  # room v12: creators outrank every power level
        levels = await self.bridge.hs.get_state(room_id, "m.room.power_levels") or {}
        users = levels.get("users") or {}
        mine = users.get(user.user_id, levels.get("users_default", 0))
        needed = levels.get("state_default", 50)
        return isinstance(mine, int) and isinstance(needed, int) and mine >= needed

    # --- what the user has ------------------------------------------------------------

    async def logins(self, user: MatrixUser) -> list[LoginRow]:
        return await self.bridge.users.logins(user_id=user.user_id)

    async def login_views(self, user: MatrixUser) -> list[LoginView]:
        """The user's logins with their connections' states, then the connections that
        belong to no stored login (automatic puppets)."""
        out: list[LoginView] = []
        matched: set[tuple[str, str]] = set()
        for row in await self.logins(user):
            connector = self.bridge.connectors.get(row.network)
            nets = {ns.network for ns in connector.namespaces()} if connector else {row.network}
            st = self.bridge.connections.find(user.user_id, row.login_id, nets)
            if st is not None:
                matched.add((st.network, st.login_id))
            out.append(LoginView(row.network, row.login_id, row.remote_name, row.state, st))
        for st in self.bridge.connections.of_user(user.user_id):
            if (st.network, st.login_id) not in matched:
                out.append(LoginView(st.network, st.login_id, st.remote_name, "", st))
        return out

    async def portals(self, user: MatrixUser) -> list[Portal]:
        """Portals whose room the user is joined to."""
        return [
            p
            for p in await self.bridge.portal_store.all()
            if p.room_id and self.bridge.hs.is_joined(p.room_id, user.user_id)
        ]

    # --- logins -----------------------------------------------------------------------

    async def login(
        self, user: MatrixUser, connector: NetworkConnector, args: list[str]
    ) -> LoginResult:
        """Log in with the connector's arguments and store the login (credentials sealed)."""
        if not isinstance(connector, LoginCapable):
            raise Refused(f"{connector.display_name} has no logins.", "invalid")
        result = await connector.login(user, args)
        await self.bridge.users.save_login(
            LoginRow(
                network=connector.name,
                login_id=result.login_id,
                user_id=user.user_id,
                credentials=self.bridge.credentials.seal(dict(result.credentials)),
                remote_name=result.remote_name,
                metadata=json.dumps({}),
            )
        )
        return result

    async def logout(
        self, user: MatrixUser, connector: NetworkConnector, login_id: str | None = None
    ) -> list[str]:
        """Forget the user's logins on the connector (one, when ``login_id`` is given);
        the ids of the logins forgotten."""
        rows = [
            r
            for r in await self.bridge.users.logins(user_id=user.user_id, network=connector.name)
            if login_id is None or r.login_id == login_id
        ]
        if not rows:
            raise Refused(f"You have no {connector.display_name} login.", "not_found")
        for row in rows:
            if isinstance(connector, LoginCapable):
                for lg in await self.bridge.logins(connector.name):
                    if lg.login_id == row.login_id:
                        await connector.logout(lg)
            await self.bridge.users.delete_login(row.network, row.login_id)
        return [r.login_id for r in rows]

    # --- portals ----------------------------------------------------------------------

    async def join(
        self, user: MatrixUser, network: str, remote_id: str, room_key: str | None = None
    ) -> Portal:
        """Open the portal (if needed) and invite the user to its room. ``room_key``: the
        key (password) the conversation takes, kept sealed for the connector's rejoins."""
        key = self._portal_key(network, remote_id)
        connector = self.bridge.connector_of(network)
        if room_key is not None:
            if not isinstance(connector, RoomKeys):
                raise Refused(f"{connector.display_name} rooms take no key.", "invalid")
            connector.set_room_key(key, room_key)
        try:
            portal = await self.bridge.portal_mgr.open_portal(key, user.user_id, invite_user=True)
        except BaseException:
            if room_key is not None and isinstance(connector, RoomKeys):
                await self.restore_room_key(connector, key)
            raise
        if portal is None:
            raise Refused(f"{remote_id} was not found on {network}.", "not_found")
        if room_key is not None:
            portal.metadata["room_key"] = self.bridge.credentials.seal({"key": room_key})
            await self.bridge.portal_store.save(portal)
        return portal

    async def restore_room_key(self, connector: RoomKeys, key: PortalKey) -> None:
        """The stored key again, after a key the user gave did not open the room."""
        portal = await self.bridge.portal_store.get(key)
        connector.set_room_key(key, self.room_key_of(portal) if portal else None)

    def room_key_of(self, portal: Portal) -> str | None:
        sealed = portal.metadata.get("room_key")
        if not isinstance(sealed, str):
            return None
        try:
            value = self.bridge.credentials.open(sealed).get("key")
        except Exception:
            self.bridge.log.warning("the stored key of %s cannot be decrypted", portal.key)
            return None
        return value if isinstance(value, str) else None

    async def link(
        self,
        user: MatrixUser,
        network: str,
        remote_id: str,
        room_id: str,
        tell: Callable[[str], Awaitable[None]] | None = None,
    ) -> Linked:
        """Bridge an existing Matrix room the user administers to a remote conversation.
        ``tell`` says something to the user meanwhile (the network's side was asked)."""
        if not await self.room_admin(room_id, user):
            raise Refused("Only room admins may link a room.")
        key = await self._free_to_link(network, remote_id, room_id)
        connector = self.bridge.connector_of(network)
        info: ChatInfo | None
        if isinstance(connector, LinkConsent):
            request = LinkRequest(
                user=user,
                portal=key,
                room_id=room_id,
                room_label=await self._room_label(room_id),
                tell=tell or self._tell(room_id),
            )
            info = await connector.request_link(request)
            # Someone may have bridged either side while the network's side was asked.
            await self._free_to_link(network, remote_id, room_id)
        elif isinstance(connector, Plumbing):
            info = await connector.link(user, key)
        else:
            info = await connector.resolve_portal(key, user)
        if info is None:
            raise Refused(f"{remote_id} was not found on {network}.", "not_found")
        if not self.bridge.hs.is_joined(room_id, self.bridge.cfg.bot_mxid):
            await self.bridge.hs.join(room_id)
        crypto = self.bridge.crypto
        if self.bridge.cfg.encryption.require and crypto and not await crypto.is_encrypted(room_id):
            raise Refused(
                "This bridge bridges only encrypted rooms: turn on encryption there first."
            )
        portal = Portal(
            key=key,
            room_id=room_id,
            name=info.name,
            topic=info.topic,
            plumbed=True,
            relay=info.relay_allowed,
        )
        await self.bridge.portal_store.save(portal)
        note = ""
        try:
            await self.bridge.portal_mgr.set_bridge_info(portal)
        except MatrixError as e:
            if e.errcode != "M_FORBIDDEN":
                raise
            note = (
                "The bot has no power to set the room's bridge info: give it power level 100"
                " so that it can also moderate for the network."
            )
        await connector.portal_opened(key)
        return Linked(portal, note)

    async def _free_to_link(self, network: str, remote_id: str, room_id: str) -> PortalKey:
        if await self.bridge.portal_store.by_room(room_id):
            raise Refused("This room is already bridged; unlink it first.", "conflict")
        key = self._portal_key(network, remote_id)
        existing = await self.bridge.portal_store.get(key)
        if existing and existing.room_id:
            raise Refused(f"{remote_id} is already bridged to {existing.room_id}.", "conflict")
        return key

    async def _room_label(self, room_id: str) -> str:
        """How the room is named to the network's side: its alias, else its name."""
        for etype, field in (("m.room.canonical_alias", "alias"), ("m.room.name", "name")):
            try:
                state = await self.bridge.hs.get_state(room_id, etype) or {}
            except MatrixError:
                continue
            value = state.get(field)
            if isinstance(value, str) and value.strip():
                return f"{value.strip()} ({room_id})" if field == "name" else value
        return room_id

    def _tell(self, room_id: str) -> Callable[[str], Awaitable[None]]:
        async def tell(text: str) -> None:
            await self.bridge.send_notice(room_id, text)

        return tell

    def _portal_key(self, network: str, name: str) -> PortalKey:
        """The connector's canonical key for a room name a user typed."""
        key = self.bridge.portal_key(network, name)
        if key is None:
            raise Refused(f"{name} was not found on {network}.", "not_found")
        return key

    async def unlink(self, user: MatrixUser, room_id: str) -> Portal:
        portal = await self.bridge.portal_store.by_room(room_id)
        if portal is None:
            raise Refused("This room is not bridged.", "not_found")
        if not await self.room_admin(room_id, user):
            raise Refused("Only room admins may unlink a room.")
        await self.bridge.portal_mgr.clear_bridge_info(portal)
        await self.bridge.connector_of(portal.key.network).portal_closed(portal.key)
        await self.bridge.portal_store.delete(portal.key)
        return portal
