"""Optional capabilities. A client (or connector) that has a method below has the capability;
the core checks with ``isinstance`` and, when a Matrix user does something the network cannot
carry, tells them in the room instead of dropping it.

Client capabilities (on :class:`~bridge.connector.base.NetworkClient`):
edits, redactions, reactions, typing, read receipts, membership, power levels, room
metadata, join rules (access), profile (display name and avatar), presence.
Connector capabilities (on :class:`~bridge.connector.base.NetworkConnector`): login, logout,
direct messages, plumbing (link, or a link the network's side consents to), room keys,
backfill, third-party lookups, extra commands (optionally
run in a room, with that room's context), HTTP routes on the bridge's own port, connection
states (for the bridge's metrics), running split across scale-out workers by user shard.
A user's own connection changes are pushed instead, with
``BridgeAPI.connection_changed`` and a :class:`ConnectionChange`.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from .base import ChatInfo, Login, MatrixUser
from .events import (
    MatrixAccess,
    MatrixEdit,
    MatrixMembership,
    MatrixPowerLevel,
    MatrixProfile,
    MatrixReaction,
    MatrixReactionRemove,
    MatrixReceipt,
    MatrixRedaction,
    MatrixRoomMeta,
    MatrixTyping,
    RemoteMessage,
    SentMessage,
)
from .ids import PortalKey

# --- client capabilities ----------------------------------------------------------------------


@runtime_checkable
class EditHandling(Protocol):
    async def handle_matrix_edit(self, edit: MatrixEdit) -> SentMessage | None:
        """Return the edit's own remote id if the network gives it one."""


@runtime_checkable
class RedactionHandling(Protocol):
    async def handle_matrix_redaction(self, redaction: MatrixRedaction) -> None: ...


@runtime_checkable
class ReactionHandling(Protocol):
    async def handle_matrix_reaction(self, reaction: MatrixReaction) -> SentMessage: ...

    async def handle_matrix_reaction_remove(self, removal: MatrixReactionRemove) -> None: ...


@runtime_checkable
class TypingHandling(Protocol):
    async def handle_matrix_typing(self, typing: MatrixTyping) -> None: ...


@runtime_checkable
class ReceiptHandling(Protocol):
    async def handle_matrix_receipt(self, receipt: MatrixReceipt) -> None: ...


@runtime_checkable
class MembershipHandling(Protocol):
    async def handle_matrix_membership(self, change: MatrixMembership) -> None: ...


@runtime_checkable
class PowerLevelHandling(Protocol):
    """Matrix power levels of portal members become the network's ranks (channel operator,
    MUC moderator...), set by the Matrix user's own remote identity."""

    async def handle_matrix_power_level(self, change: MatrixPowerLevel) -> None: ...


@runtime_checkable
class RoomMetaHandling(Protocol):
    async def handle_matrix_room_meta(self, change: MatrixRoomMeta) -> None: ...


@runtime_checkable
class AccessHandling(Protocol):
    """A portal's join rule becomes the conversation's (IRC +i), or the room hears why not."""

    async def handle_matrix_access(self, change: MatrixAccess) -> None: ...


@runtime_checkable
class ProfileHandling(Protocol):
    """Follow a puppeted Matrix user's display name and avatar (IRC NICK, an XMPP occupant's
    nick and vCard avatar...). Called once per portal the change is seen in, so make it
    idempotent per connection."""

    async def handle_matrix_profile(self, change: MatrixProfile) -> None: ...


@runtime_checkable
class PresenceHandling(Protocol):
    async def handle_matrix_presence(self, presence: str, status: str | None) -> None: ...


# --- connector capabilities -------------------------------------------------------------------


@dataclass(slots=True)
class LoginResult:
    login_id: str
    credentials: dict[str, object]
    remote_name: str = ""
    message: str = ""  # shown to the user


@runtime_checkable
class LoginCapable(Protocol):
    login_help: str  # one line: the arguments ``login <network>`` takes

    async def login(self, user: MatrixUser, args: list[str]) -> LoginResult:
        """Check the arguments (and the credentials, where the network allows) and return
        what the core stores. Raise ``ConnectorError`` with a readable reason on failure."""

    async def logout(self, login: Login) -> None: ...


@runtime_checkable
class DirectMessaging(Protocol):
    async def open_dm(self, user: MatrixUser, network: str, remote_user_id: str) -> PortalKey:
        """A Matrix user invited a ghost: the portal key of their DM with that remote user."""


@runtime_checkable
class Plumbing(Protocol):
    async def link(self, user: MatrixUser, portal: PortalKey) -> ChatInfo:
        """Check that ``user`` may bridge an existing room to ``portal`` (raise
        ``ConnectorError`` otherwise)."""


TellRoom = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class LinkRequest:
    """A Matrix room admin asks to bridge ``room_id`` to ``portal``. ``room_label`` names the
    room for whoever is asked on the network (its alias or name); ``tell`` says something in
    the Matrix room the request came from, at once (that the network's side was asked)."""

    user: MatrixUser
    portal: PortalKey
    room_id: str
    room_label: str
    tell: TellRoom


@runtime_checkable
class LinkConsent(Protocol):
    """Links that need the network's side to agree (an IRC channel operator): a connector
    with this capability decides every link; one without it allows links as ``Plumbing``
    (or ``resolve_portal``) says."""

    async def request_link(self, request: LinkRequest) -> ChatInfo | None:
        """Return the conversation's info once its side agreed (may take as long as someone
        takes to answer, within the connector's bound), None when there is no such
        conversation; raise ``ConnectorError`` saying why when the link is refused."""


@runtime_checkable
class RoomKeys(Protocol):
    """Conversations that take a key (password) to join: an IRC channel's +k. The core
    keeps each portal's key sealed like login credentials and gives it back before
    ``start`` after a restart."""

    def set_room_key(self, portal: PortalKey, key: str | None) -> None:
        """Join ``portal`` with ``key`` from now on (None: without a key)."""


@dataclass(frozen=True, slots=True)
class ShardScope:
    """The part of its networks a connector instance answers for (scale-out mode, see
    :class:`ShardedConnector`). ``shards`` are the shard names this instance's worker holds:
    ``<network>.main`` for what belongs to the network as a whole, ``<network>.<n>`` for the
    Matrix users whose id hashes to ``n``."""

    shards: frozenset[str]
    shard_count: int = 256

    def main(self, network: str) -> bool:
        """Whether this instance runs the network's own part: its bot or listener, the relay,
        portal and ghost lookups, links, commands, HTTP routes."""
        from bridge.scale.shards import shard_of

        return shard_of(network, None, self.shard_count) in self.shards

    def owns(self, network: str, matrix_user_id: str) -> bool:
        """Whether this instance holds the Matrix user's puppet or login on the network."""
        from bridge.scale.shards import shard_of

        return shard_of(network, matrix_user_id, self.shard_count) in self.shards


@runtime_checkable
class ShardedConnector(Protocol):
    """A connector that can run split across the workers of scale-out mode: one instance on
    every worker that holds some of its networks' shards, each responsible only for the Matrix
    users whose shards its worker holds (their puppets, logins, DMs) and, on the one worker
    holding a network's main shard, for the network's own part (see :meth:`ShardScope.main`).
    The core sends each user's operations (``client_for`` and the client's handlers, ``login``,
    ``logout``, ``open_dm``) to the instance holding the user's shard, everything else to the
    main shard's. ``portal_closed`` is asked of the main shard's instance and told to every
    other instance too (best effort: lost while the bus is away, when ``BridgeAPI.portals``
    no longer lists the portal). Without this capability a connector runs whole on one
    worker.

    In one process the scope is never set: the instance holds everything."""

    async def set_scope(self, scope: ShardScope) -> None:
        """The shards this instance answers for: called once before ``start`` and again,
        after ``start``, whenever its worker gains or loses one of them. On a loss, close the
        connections of users (or of the main part) no longer in scope promptly (within the
        lease margin, 3 s by default): another worker takes them over. On a gain, connect the
        users now in scope (``BridgeAPI.logins`` lists every login: keep those in scope)."""


@runtime_checkable
class Backfilling(Protocol):
    async def fetch_history(self, portal: PortalKey, limit: int) -> list[RemoteMessage]:
        """Recent messages, oldest first, for a newly created portal."""


@dataclass(slots=True)
class ThirdPartyProtocol:
    """Answers ``/thirdparty/protocol/{name}``: fields a user or location lookup takes."""

    user_fields: list[str]
    location_fields: list[str]
    field_types: dict[str, dict[str, str]]  # name -> {regexp, placeholder}
    icon: str = ""


@runtime_checkable
class ThirdPartyLookup(Protocol):
    def thirdparty_protocol(self) -> ThirdPartyProtocol: ...

    async def thirdparty_locations(self, fields: dict[str, str]) -> list[PortalKey]: ...

    async def thirdparty_users(self, fields: dict[str, str]) -> list[tuple[str, str]]:
        """(network, remote user id) pairs."""


CommandHandler = Callable[[MatrixUser, list[str]], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class CommandRoom:
    """Where a room command was given: the Matrix room, the portal bridged to it (None when
    the room is not a portal of this connector), and whether the user may change the room's
    state (a bridge admin, the room's creator, or power enough for state events)."""

    room_id: str
    portal: PortalKey | None
    room_admin: bool
    management: bool


RoomCommandHandler = Callable[[MatrixUser, list[str], CommandRoom], Awaitable[str]]


@dataclass(slots=True)
class ConnectorCommand:
    """A command of the connector. ``handler`` gets the user and the words after the command;
    a command that needs the room it was typed in sets ``room_handler`` instead (``handler``
    is then not called)."""

    name: str
    help: str
    handler: CommandHandler | None = None
    admin_only: bool = False
    args: str = ""
    room_handler: RoomCommandHandler | None = None


@runtime_checkable
class ExtraCommands(Protocol):
    def commands(self) -> list[ConnectorCommand]:
        """Commands users type as ``<network> <command> ...`` in the management room."""


class ConnectionState(enum.StrEnum):
    CONNECTED = "connected"  # up and usable
    CONNECTING = "connecting"  # a first attempt, or reconnecting after a loss
    DISCONNECTED = "disconnected"  # down, waiting before the next attempt
    FAILED = "failed"  # given up (refused credentials, banned...): needs an admin or user


@dataclass(frozen=True, slots=True)
class RemoteConnection:
    """One connection to a network: a bot's, a component's, a puppet's or a login's."""

    network: str  # ``Namespace.network``
    state: ConnectionState


@dataclass(frozen=True, slots=True)
class ConnectionChange:
    """A Matrix user's own connection changed state: their puppet's or their login's. Given
    to ``BridgeAPI.connection_changed`` at every change, retries included: the core keeps
    each login's state and since when, and tells the user once per outage, not per retry.

    ``login_id`` is the stored login's id where the connection belongs to one (so the core
    can show it next to the login), else any id stable for this user and network.
    ``state`` None means the connection was closed on purpose (logout, idle, shutdown): the
    core forgets it without a word. ``reason`` is for the user ("authentication failed:
    ..."); ``auth_failed`` says that logging in again is what helps; ``advice``, when given,
    says what to do in the connector's own words (the command to type) instead of the core's
    general hint. ``at`` is a Unix time."""

    user_id: str
    network: str  # ``Namespace.network``
    login_id: str
    state: ConnectionState | None
    reason: str = ""
    auth_failed: bool = False
    remote_name: str = ""  # how the user is known there (a nick, a JID, an address)
    advice: str = ""
    at: float = field(default_factory=time.time)


@runtime_checkable
class ConnectionReporting(Protocol):
    async def connection_states(self) -> list[RemoteConnection]:
        """Every connection the connector holds now (stopped ones left out). Called when the
        bridge's metrics are scraped: answer quickly (from memory, or a local call with a short
        timeout)."""


# --- HTTP routes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A request to one of a connector's routes. ``headers`` has lower-case names; ``body`` is
    whole (the core refuses bodies over the route's ``max_body`` with 413 before calling)."""

    method: str
    path_params: Mapping[str, str]
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    remote: str | None = None


@dataclass(slots=True)
class HttpResponse:
    """A JSON answer (``body`` is serialised by the core)."""

    status: int
    body: object = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]


@dataclass(slots=True)
class HttpRoute:
    """``path`` is relative to ``/_mimi/<connector name>/`` and may hold ``{param}`` parts."""

    method: str
    path: str
    handler: HttpHandler
    max_body: int = 64 * 1024


@runtime_checkable
class HttpRoutes(Protocol):
    def http_routes(self) -> list[HttpRoute]:
        """Routes the bridge serves on its own port under ``/_mimi/<connector name>/``.
        Asked once, before :meth:`NetworkConnector.start`: handlers must answer (503, say)
        until the connector is ready. The public base of the URLs is
        ``BridgeAPI.public_url``."""
