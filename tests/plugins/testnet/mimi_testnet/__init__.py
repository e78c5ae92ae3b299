"""An in-memory network, written only against ``bridge.connector`` as a third-party plugin
would be. Every room ``#...`` exists; every user exists. What the bridge sends is recorded in
``connector.sent`` (and appended to ``record_file`` as JSON lines, for tests that kill the
bridge); tests inject remote events with the ``remote_*`` methods, or, when the bridge runs
in other processes, by appending JSON lines to ``inbox_file`` (``{"room", "user", "text",
"receiver", "id"}``): every instance reads the lines written after it started, and the one
holding the line's receiver (the main one, for a line without) sends it.

It runs split in scale-out mode (``ShardedConnector``): an instance answers only for the
Matrix users in its scope (their clients, logins, DMs) and, on the main shard, for the relay
and the network's rooms; it refuses the rest, so that a misrouted operation shows."""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bridge.connector import (
    Attachment,
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
    MessageContent,
    Namespace,
    NetworkClient,
    NetworkConnector,
    PortalKey,
    RemoteConnection,
    RemoteEdit,
    RemoteMessage,
    RemotePresence,
    RemoteReaction,
    RemoteReceipt,
    RemoteRedaction,
    RemoteTyping,
    Sender,
    SentMessage,
    ShardScope,
)

NETWORK = "testnet"


def _read_from(path: Path, offset: int) -> bytes:
    if not path.exists():
        return b""
    with path.open("rb") as f:
        f.seek(offset)
        return f.read()


class TestNetClient(NetworkClient):
    """Has every optional capability."""

    def __init__(self, connector: TestNetConnector, name: str) -> None:
        self.connector = connector
        self.name = name

    async def handle_matrix_message(self, msg: MatrixMessage) -> SentMessage:
        if self.connector.delay:
            await asyncio.sleep(self.connector.delay)
        if "fail:" in msg.content.text:
            raise ConnectorError("the test network refused this message")
        rid = self.connector.new_id()
        self.connector.record(
            "message",
            msg.portal,
            as_=self.name,
            id=rid,
            text=msg.content.text,
            html=msg.content.html,
            relayed=msg.sender.relayed,
            event_id=msg.event_id,
            reply_to=msg.reply_to.remote_id if msg.reply_to else None,
            thread=msg.thread_root.remote_id if msg.thread_root else None,
            files=[(a.filename, len(a.data or b"")) for a in msg.content.attachments],
        )
        return SentMessage(rid)

    async def handle_matrix_edit(self, edit: MatrixEdit) -> SentMessage | None:
        self.connector.record(
            "edit", edit.portal, as_=self.name, target=edit.target.remote_id, text=edit.content.text
        )
        return None

    async def handle_matrix_redaction(self, redaction: MatrixRedaction) -> None:
        self.connector.record(
            "redaction", redaction.portal, as_=self.name, target=redaction.target.remote_id
        )

    async def handle_matrix_reaction(self, reaction: MatrixReaction) -> SentMessage:
        rid = self.connector.new_id()
        self.connector.record(
            "reaction",
            reaction.portal,
            as_=self.name,
            id=rid,
            target=reaction.target.remote_id,
            key=reaction.key,
        )
        return SentMessage(rid)

    async def handle_matrix_reaction_remove(self, removal: MatrixReactionRemove) -> None:
        self.connector.record(
            "unreact",
            removal.portal,
            as_=self.name,
            target=removal.target.remote_id,
            key=removal.key,
        )

    async def handle_matrix_typing(self, typing: MatrixTyping) -> None:
        self.connector.record("typing", typing.portal, as_=self.name, typing=typing.typing)

    async def handle_matrix_receipt(self, receipt: MatrixReceipt) -> None:
        self.connector.record(
            "receipt", receipt.portal, as_=self.name, target=receipt.target.remote_id
        )

    async def handle_matrix_membership(self, change: MatrixMembership) -> None:
        self.connector.record(
            "membership",
            change.portal,
            as_=self.name,
            membership=change.membership.value,
            target=change.target.remote_id if change.target else None,
        )

    async def handle_matrix_power_level(self, change: MatrixPowerLevel) -> None:
        self.connector.record(
            "power",
            change.portal,
            as_=self.name,
            target=change.target.remote_id if change.target else change.target_matrix_user,
            level=change.level,
            previous=change.previous,
        )

    async def handle_matrix_presence(self, presence: str, status: str | None) -> None:
        self.connector.record(
            "presence", PortalKey(NETWORK, ""), as_=self.name, presence=presence, status=status
        )

    async def handle_matrix_profile(self, change: MatrixProfile) -> None:
        self.connector.record(
            "profile",
            change.portal,
            as_=self.name,
            name=change.display_name,
            avatar=len(change.avatar.data or b"") if change.avatar else None,
            avatar_type=change.avatar.mimetype if change.avatar else None,
            removed=change.avatar_removed,
        )

    async def handle_matrix_room_meta(self, change: MatrixRoomMeta) -> None:
        self.connector.record(
            "meta",
            change.portal,
            as_=self.name,
            name=change.name,
            topic=change.topic,
            avatar=len(change.avatar.data or b"") if change.avatar else None,
        )


class TestNetConnector(NetworkConnector):
    name = "testnet"
    display_name = "Test Network"

    def __init__(self, bridge: Any, config: Mapping[str, Any]) -> None:
        super().__init__(bridge, config)
        self.sent: list[dict[str, Any]] = []
        self.delay = float(config.get("delay_seconds", 0))
        self.record_file = Path(config["record_file"]) if config.get("record_file") else None
        self._ids = itertools.count(1)
        self._tag = secrets.token_hex(3)
        self._clients: dict[str, TestNetClient] = {}
        self.login_help = "<remote name>"
        self.opened: list[PortalKey] = []
        self.connected = False
        self.scope: ShardScope | None = None  # None: the whole network (one process)
        self.inbox = Path(config["inbox_file"]) if config.get("inbox_file") else None
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> None:
        for key in config:
            if key not in ("delay_seconds", "record_file", "relay", "inbox_file"):
                raise ConfigError(key, "unknown key")
        if not isinstance(config.get("delay_seconds", 0), int | float):
            raise ConfigError("delay_seconds", "must be a number")

    def new_id(self) -> str:
        # Unique across instances (several run at once when the network runs split).
        return f"tn-{next(self._ids)}-{self._tag}"

    def record(self, kind: str, portal: PortalKey, **fields: Any) -> None:
        entry = {"kind": kind, "room": portal.remote_id, **fields}
        self.sent.append(entry)
        if self.record_file:
            with self.record_file.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    async def start(self) -> None:
        self.opened = list(await self.bridge.portals(NETWORK))
        self.connected = True
        for login in await self.bridge.logins(self.name):
            if self.mine(login.user_id):
                self.set_connection(login.user_id, login.login_id, ConnectionState.CONNECTED)
        if self.inbox is not None:
            start = self.inbox.stat().st_size if self.inbox.exists() else 0
            self._reader = asyncio.create_task(self._read_inbox(self.inbox, start))

    async def _read_inbox(self, path: Path, offset: int) -> None:
        """What the network delivers to this instance's connections, from ``inbox_file``."""
        while True:
            await asyncio.sleep(0.1)
            data = _read_from(path, offset)  # a small local file: no thread needed
            end = data.rfind(b"\n") + 1
            offset += end
            for line in data[:end].splitlines():
                entry = json.loads(line)
                receiver = str(entry.get("receiver") or "")
                if not (self.mine(receiver) if receiver else self.main):
                    continue
                await self.remote_message(
                    str(entry["room"]),
                    str(entry["user"]),
                    str(entry["text"]),
                    receiver=receiver,
                    msg_id=entry.get("id"),
                )

    # ShardedConnector
    async def set_scope(self, scope: ShardScope) -> None:
        before, self.scope = self.scope, scope
        if not scope.main(NETWORK):
            self._clients.pop("relaybot", None)
        for login in await self.bridge.logins(self.name):
            name = str(login.credentials.get("name"))
            if not self.mine(login.user_id):
                self._clients.pop(name, None)  # the instance that has the user now reports it
            elif self.connected and before is not None and not before.owns(NETWORK, login.user_id):
                self.set_connection(login.user_id, login.login_id, ConnectionState.CONNECTED)

    def mine(self, matrix_user_id: str) -> bool:
        """Whether this instance holds the Matrix user's connection."""
        return self.scope is None or self.scope.owns(NETWORK, matrix_user_id)

    @property
    def main(self) -> bool:
        """Whether this instance holds the network's own part (the relay bot)."""
        return self.scope is None or self.scope.main(NETWORK)

    def _check_mine(self, matrix_user_id: str) -> None:
        if not self.mine(matrix_user_id):
            raise ConnectorError(f"{matrix_user_id} is not connected through this instance")

    def set_connection(
        self,
        user_id: str,
        login_id: str,
        state: ConnectionState | None,
        reason: str = "",
        auth_failed: bool = False,
    ) -> None:
        """A login's connection changes state (tests drive it; logins start connected)."""
        self.bridge.connection_changed(
            ConnectionChange(user_id, NETWORK, login_id, state, reason, auth_failed, login_id)
        )

    async def stop(self) -> None:
        self.connected = False
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None

    # ConnectionReporting: one connection, up between start and stop.
    async def connection_states(self) -> list[RemoteConnection]:
        if not self.connected or not self.main:
            return []
        return [RemoteConnection(NETWORK, ConnectionState.CONNECTED)]

    def namespaces(self) -> list[Namespace]:
        return [Namespace(NETWORK, "testnet_", "Test Network")]

    async def resolve_portal(self, portal: PortalKey, user: MatrixUser | None) -> ChatInfo | None:
        if not portal.remote_id.startswith("#") or portal.remote_id == "#missing":
            return None
        return ChatInfo(name=portal.remote_id, topic=f"The test room {portal.remote_id}")

    async def resolve_ghost(self, network: str, remote_user_id: str) -> GhostInfo | None:
        return GhostInfo(display_name=remote_user_id.title())

    async def portal_opened(self, portal: PortalKey) -> None:
        self.opened.append(portal)

    async def client_for(self, user: MatrixUser, portal: PortalKey) -> NetworkClient | None:
        self._check_mine(user.user_id)
        for login in await self.bridge.logins(self.name):
            if login.user_id == user.user_id:
                name = str(login.credentials["name"])
                return self._clients.setdefault(name, TestNetClient(self, name))
        return None

    async def relay_client(self, portal: PortalKey) -> NetworkClient | None:
        if not self.config.get("relay", True):
            return None
        if not self.main:
            raise ConnectorError("the relay bot is not on this instance")
        return self._clients.setdefault("relaybot", TestNetClient(self, "relaybot"))

    # LoginCapable
    async def login(self, user: MatrixUser, args: list[str]) -> LoginResult:
        if len(args) != 1:
            raise ConnectorError("usage: login testnet <remote name>")
        self._check_mine(user.user_id)
        self.set_connection(user.user_id, args[0], ConnectionState.CONNECTED)
        return LoginResult(login_id=args[0], credentials={"name": args[0]}, remote_name=args[0])

    async def logout(self, login: Login) -> None:
        self._check_mine(login.user_id)
        self._clients.pop(str(login.credentials.get("name")), None)
        self.set_connection(login.user_id, login.login_id, None)

    # Backfilling: "#history" has three old messages.
    async def fetch_history(self, portal: PortalKey, limit: int) -> list[RemoteMessage]:
        # Rooms named #history..., and the DM with olga, have three old messages.
        if not portal.remote_id.startswith("#history") and portal.remote_id != "olga":
            return []
        return [
            RemoteMessage(
                portal=portal,
                sender=Sender("olga", "Olga"),
                id=f"old-{n}",
                timestamp=1_000 * n,
                content=MessageContent(text=f"old message {n}"),
            )
            for n in range(1, 4)
        ][-limit:]

    # DirectMessaging
    async def open_dm(self, user: MatrixUser, network: str, remote_user_id: str) -> PortalKey:
        self._check_mine(user.user_id)
        return PortalKey(NETWORK, remote_user_id, receiver=user.user_id)

    # --- the remote side, driven by tests ---

    async def remote_message(
        self,
        room: str,
        user: str,
        text: str,
        *,
        html: str | None = None,
        reply_to: str | None = None,
        msg_id: str | None = None,
        receiver: str = "",
        thread_root: str | None = None,
        attachments: list[Attachment] | None = None,
    ) -> str:
        if receiver:  # a DM reaches the receiver's own connection
            self._check_mine(receiver)
        msg_id = msg_id or self.new_id()
        await self.bridge.emit(
            RemoteMessage(
                portal=PortalKey(NETWORK, room, receiver),
                sender=Sender(user, user.title()),
                id=msg_id,
                content=MessageContent(text=text, html=html, attachments=attachments or []),
                reply_to=reply_to,
                thread_root=thread_root,
            )
        )
        return msg_id

    async def remote_edit(self, room: str, user: str, target: str, text: str) -> None:
        await self.bridge.emit(
            RemoteEdit(
                portal=PortalKey(NETWORK, room),
                sender=Sender(user, user.title()),
                target_id=target,
                content=MessageContent(text=text),
            )
        )

    async def remote_reaction(self, room: str, user: str, target: str, key: str) -> None:
        await self.bridge.emit(
            RemoteReaction(
                portal=PortalKey(NETWORK, room),
                sender=Sender(user, user.title()),
                target_id=target,
                key=key,
            )
        )

    async def remote_presence(self, user: str, presence: str) -> None:
        await self.bridge.emit(
            RemotePresence(portal=PortalKey(NETWORK, ""), sender=Sender(user), presence=presence)
        )

    async def remote_typing(self, room: str, user: str, typing: bool = True) -> None:
        await self.bridge.emit(
            RemoteTyping(portal=PortalKey(NETWORK, room), sender=Sender(user), typing=typing)
        )

    async def remote_receipt(self, room: str, user: str, target: str) -> None:
        await self.bridge.emit(
            RemoteReceipt(portal=PortalKey(NETWORK, room), sender=Sender(user), target_id=target)
        )

    async def remote_redaction(self, room: str, user: str, target: str) -> None:
        await self.bridge.emit(
            RemoteRedaction(
                portal=PortalKey(NETWORK, room), sender=Sender(user, user.title()), target_id=target
            )
        )
