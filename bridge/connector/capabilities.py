"""Optional capabilities. A client (or connector) that has a method below has the capability;
the core checks with ``isinstance`` and, when a Matrix user does something the network cannot
carry, tells them in the room instead of dropping it.

Client capabilities (on :class:`~bridge.connector.base.NetworkClient`):
edits, redactions, reactions, typing, read receipts, membership, power levels, room
metadata, profile (display name and avatar), presence.
Connector capabilities (on :class:`~bridge.connector.base.NetworkConnector`): login, logout,
direct messages, plumbing (link), backfill, third-party lookups, extra commands, connection
states (for the bridge's metrics).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .base import ChatInfo, Login, MatrixUser
from .events import (
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


@dataclass(slots=True)
class ConnectorCommand:
    name: str
    help: str
    handler: CommandHandler
    admin_only: bool = False
    args: str = ""


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


@runtime_checkable
class ConnectionReporting(Protocol):
    async def connection_states(self) -> list[RemoteConnection]:
        """Every connection the connector holds now (stopped ones left out). Called when the
        bridge's metrics are scraped: answer quickly (from memory, or a local call with a short
        timeout)."""
