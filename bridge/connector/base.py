"""The required part of the connector contract.

A connector is a :class:`NetworkConnector` subclass (one per network, registered under the
``mimi_bridge.connectors`` entry-point group) plus one :class:`NetworkClient` subclass (one
per identity that speaks on the network: a Matrix user's puppet, or the relay bot). Optional
features are the capability protocols in :mod:`bridge.connector.capabilities`; the core
discovers them with ``isinstance`` and tells the Matrix user when one is missing.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from .events import Attachment, MatrixMessage, RemoteEvent, SentMessage
from .ids import PortalKey, escape_localpart, unescape_localpart
from .tables import Migrations

if TYPE_CHECKING:
    from .capabilities import ConnectionChange


class ConnectorError(Exception):
    """An error whose message can be shown to the Matrix user as it is (no traceback)."""


class ConfigError(ConnectorError):
    """A bad value in a connector's config section. ``key`` is relative to the section."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class NotSupported(ConnectorError):
    """The network cannot carry this action; the message says what happened instead."""


@dataclass(frozen=True, slots=True)
class Namespace:
    """A slice of the homeserver's user and alias namespaces owned by one network instance.

    Ghosts are ``@{prefix}{escaped remote user}:domain`` and portal aliases are
    ``#{prefix}{escaped remote room}:domain``. ``network`` is the value of
    ``PortalKey.network`` / ``GhostKey.network`` for this instance.
    """

    network: str
    prefix: str
    description: str


@dataclass(slots=True)
class ChatInfo:
    """What the core needs to open a portal for a remote conversation."""

    name: str | None = None
    topic: str | None = None
    is_direct: bool = False
    # Remote users to show as members (ghosts are created and joined lazily otherwise).
    members: list[str] = field(default_factory=list)
    relay_allowed: bool = True


@dataclass(slots=True)
class GhostInfo:
    display_name: str | None = None
    avatar_mxc: str | None = None


@dataclass(frozen=True, slots=True)
class MatrixUser:
    user_id: str
    display_name: str
    permission: str  # "relay" | "user" | "admin"


@dataclass(slots=True)
class Login:
    """A stored login of a Matrix user on a network (``login <network> ...``)."""

    network: str
    login_id: str
    user_id: str
    credentials: dict[str, Any]  # stored encrypted by the core
    remote_name: str = ""
    state: str = "ok"
    metadata: dict[str, Any] = field(default_factory=dict)


class BridgeAPI(Protocol):
    """What the core offers a connector. Connectors hold this and nothing else of the core."""

    domain: str
    log: logging.Logger

    async def emit(self, event: RemoteEvent) -> None:
        """Queue a remote event for Matrix. Events of one portal are delivered in order."""

    async def notify(self, user_id: str, text: str, portal: PortalKey | None = None) -> None:
        """Tell a Matrix user something: in the portal room when given, else the management
        room. For every failure the user must hear about (never drop silently)."""

    def connection_changed(self, change: ConnectionChange) -> None:
        """A Matrix user's own connection (puppet or login) changed state. Call it at every
        change, each retry included; it never blocks (protocol callbacks may call it). The
        core keeps the state for ``list``, ``ping`` and the provisioning API and tells the
        user in the management room once per drop, failure and recovery."""

    async def matrix_user(self, user_id: str) -> MatrixUser:
        """The Matrix user's current display name and permission. Raises
        :class:`ConnectorError` when the homeserver knows no such user."""

    async def matrix_avatar(self, user_id: str) -> Attachment | None:
        """The Matrix user's current avatar (bytes and type), None when they have none. For
        networks that announce a puppet's picture when it appears; later changes come through
        ``ProfileHandling``."""

    async def portals(self, network: str) -> list[PortalKey]:
        """All portals of a network (for rejoining channels at start)."""

    async def portal_members(self, portal: PortalKey) -> list[MatrixUser]:
        """Matrix users (not ghosts) joined to a portal room."""

    async def logins(self, network: str) -> list[Login]:
        """All stored logins on a network."""

    def database(self) -> Any:
        """The bridge's ``mautrix.util.async_db.Database``, for connectors' own tables."""

    def ghost_user_id(self, network: str, remote_id: str) -> str:
        """The Matrix user id of a remote user's ghost."""

    def mxc_to_url(self, mxc: str, filename: str = "") -> str:
        """A link anyone can open to Matrix media, for networks that carry only links (the
        bridge serves it; see ``appservice.public_address``)."""

    async def upload_text(self, text: str, filename: str) -> str:
        """Upload a long text to the content repository and return a link to it."""

    async def link_room(self, user_id: str, room_id: str, portal: PortalKey) -> None:
        """Bridge the existing Matrix room ``room_id`` to ``portal``, as the user's own
        ``link`` command would, with the same rules (a room admin; neither side bridged yet).
        Raises :class:`ConnectorError` saying why when that is refused. For a connector whose
        room command sets a room up in one step (``webhook create``)."""

    async def save_room_key(self, portal: PortalKey, key: str | None) -> None:
        """The conversation's key (password) changed on the network (None: it takes none
        any more): keep it sealed for later starts, as ``join <network> <room> <key>`` does,
        so that ``RoomKeys.set_room_key`` gives the new one back. The connector follows
        the change itself (it is not called back). Nothing is kept without a portal."""

    def public_url(self, path: str) -> str:
        """The address the outside world reaches the bridge's ``path`` at (from
        ``appservice.public_address``, else ``appservice.address``), for a connector's
        ``HttpRoutes``."""
        ...


class NetworkClient(ABC):
    """One identity on the network: a Matrix user's puppet or the relay bot. The required
    method sends a message; the optional capabilities add the rest."""

    @abstractmethod
    async def handle_matrix_message(self, msg: MatrixMessage) -> SentMessage:
        """Send a Matrix message to the network and return its remote id. Raise
        :class:`ConnectorError` with a user-readable text when it cannot be delivered."""


class NetworkConnector(ABC):
    """One network. Subclasses set ``name`` (the ``connectors.<name>`` config section and
    the protocol id in the registration) and implement the abstract methods."""

    name: ClassVar[str]
    display_name: ClassVar[str]
    # Where the connector's config documentation lives (shown in errors and docs).
    example_config: ClassVar[str] = ""
    # The connector's own tables in the bridge's database, as ordered migrations (see
    # bridge.connector.tables); run at start-up before start(), versioned under ``name``.
    migrations: ClassVar[Migrations] = ()

    def __init__(self, bridge: BridgeAPI, config: Mapping[str, Any]) -> None:
        self.bridge = bridge
        self.config = config
        self.log = bridge.log.getChild(self.name)

    # --- configuration ------------------------------------------------------------------

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> None:
        """Raise :class:`ConfigError` for a bad section. Called before start-up."""

    # --- lifecycle ----------------------------------------------------------------------

    @abstractmethod
    async def start(self) -> None:
        """Connect what must be connected (bot connections, components) and rejoin portals."""

    @abstractmethod
    async def stop(self) -> None:
        """Close every connection cleanly."""

    # --- identifiers --------------------------------------------------------------------

    @abstractmethod
    def namespaces(self) -> list[Namespace]:
        """The instances of this network (one per configured IRC network, say)."""

    def ghost_localpart(self, network: str, remote_user_id: str) -> str:
        """The localpart (without the instance prefix) of a remote user's ghost."""
        return escape_localpart(remote_user_id)

    def parse_ghost_localpart(self, network: str, localpart: str) -> str | None:
        """Invert :meth:`ghost_localpart`; None when no remote user maps to it."""
        try:
            return unescape_localpart(localpart)
        except ValueError:
            return None

    def alias_localpart(self, network: str, remote_room_id: str) -> str:
        return escape_localpart(remote_room_id)

    def parse_alias_localpart(self, network: str, localpart: str) -> str | None:
        try:
            return unescape_localpart(localpart)
        except ValueError:
            return None

    def canonical_room_id(self, network: str, remote_room_id: str) -> str | None:
        """The remote room id the connector keeps for a room a user named (``join``,
        ``link``, third-party lookups), or None when the name is no room id at all. The
        core builds portal keys from user input only through this, so that ``#Chan`` and
        ``#chan`` are one portal where the network counts them as one room.

        By default the alias round trip, ``parse_alias_localpart(alias_localpart(id))``:
        right for every connector whose alias localpart names the canonical id (escaped or
        case-folded). Override it when an alias cannot give the id back (an invite link
        whose alias names the group it leads to, before the bridge has joined the group)."""
        return self.parse_alias_localpart(network, self.alias_localpart(network, remote_room_id))

    # --- opening portals and ghosts -----------------------------------------------------

    @abstractmethod
    async def resolve_portal(self, portal: PortalKey, user: MatrixUser | None) -> ChatInfo | None:
        """Whether a remote conversation exists (or may be opened) and what it looks like.
        Called when someone joins an alias in the network's namespace, or uses ``join``.
        Return None to answer "no such room"."""

    @abstractmethod
    async def resolve_ghost(self, network: str, remote_user_id: str) -> GhostInfo | None:
        """Whether a remote user id is valid. Return None to answer "no such user"."""

    async def portal_opened(self, portal: PortalKey) -> None:
        """A portal room now exists for ``portal``: start listening to it (join the channel
        with the bot, for example)."""

    async def portal_closed(self, portal: PortalKey) -> None:
        """A portal was unlinked or deleted: stop listening to it."""

    # --- who speaks --------------------------------------------------------------------

    @abstractmethod
    async def client_for(self, user: MatrixUser, portal: PortalKey) -> NetworkClient | None:
        """The client that speaks for ``user`` in ``portal``: their own login or an automatic
        puppet. None when the user has no identity on the network (the core then relays if
        the portal allows it, or tells the user to log in)."""

    async def relay_client(self, portal: PortalKey) -> NetworkClient | None:
        """The client that relays Matrix users without an identity. None: no relay."""
        return None
