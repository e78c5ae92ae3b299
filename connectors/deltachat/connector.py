"""The Delta Chat connector: Matrix rooms and chats with Delta Chat, the messenger over e-mail.

Everything goes through the official Delta Chat core (``deltachat-rpc-server``), which does
IMAP, SMTP and the Autocrypt/OpenPGP end-to-end encryption; the connector talks JSON-RPC to it
over asyncio pipes. One core process holds every account of the bridge: its own (the relay)
and one puppet per logged-in Matrix user. This module only wires the parts together:

* :mod:`.rpc`: the JSON-RPC client and the core's process; :mod:`.calls`: calls made for a
  Matrix user (waiting for a restarting core, readable errors);
* :mod:`.accounts`: the relay and puppet accounts, logins; :mod:`.contacts`: contacts and
  their keys; :mod:`.chats`: portals <-> core chats; :mod:`.ids`: identifiers and aliases;
* :mod:`.matrix_to_deltachat`: Matrix events -> core calls;
* :mod:`.deltachat_to_matrix`: core events -> RemoteEvents;
* :mod:`.groups`: linking and secure-joining groups, member/name/topic/avatar sync;
* :mod:`.delivery`, :mod:`.rate_limit`, :mod:`.files`, :mod:`.messages`, :mod:`.commands`,
  :mod:`.store` (the connector's tables), :mod:`.config`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from bridge.connector import (
    ChatInfo,
    ConnectionState,
    ConnectorCommand,
    ConnectorError,
    GhostInfo,
    Login,
    LoginResult,
    MatrixEdit,
    MatrixMembership,
    MatrixMessage,
    MatrixReaction,
    MatrixReactionRemove,
    MatrixReceipt,
    MatrixRedaction,
    MatrixRoomMeta,
    MatrixUser,
    Namespace,
    NetworkClient,
    NetworkConnector,
    PortalKey,
    RemoteConnection,
    RemoteMessage,
    SentMessage,
    escape_localpart,
)

from . import ids
from .accounts import Accounts
from .calls import CoreCalls
from .chats import Chats
from .commands import Commands
from .config import DeltaChatConfig, parse_config, valid_address
from .connectivity import Connectivity
from .contacts import Contacts
from .delivery import Deliveries
from .deltachat_to_matrix import DeltaChatToMatrix
from .groups import Groups
from .matrix_to_deltachat import MatrixToDeltaChat
from .own_sends import OwnSends
from .rpc import Rpc, RpcDown, RpcError
from .store import Store
from .tables import MIGRATIONS


class DeltaChatClient(NetworkClient):
    """One Delta Chat account speaking for Matrix users: a puppet, or the bridge's own
    account as the relay."""

    def __init__(self, conn: DeltaChatConnector, account: int, user_id: str | None) -> None:
        self.conn = conn
        self.account = account
        self.user_id = user_id  # None: the relay

    async def handle_matrix_message(self, msg: MatrixMessage) -> SentMessage:
        out = self.conn.outgoing
        return await self.conn.calls.retrying(lambda: out.message(self.account, msg))

    async def handle_matrix_edit(self, edit: MatrixEdit) -> SentMessage | None:
        out = self.conn.outgoing
        await self.conn.calls.retrying(lambda: out.edit(self.account, self.user_id, edit))
        return None

    async def handle_matrix_redaction(self, redaction: MatrixRedaction) -> None:
        out = self.conn.outgoing
        await self.conn.calls.retrying(lambda: out.redaction(self.account, self.user_id, redaction))

    async def handle_matrix_reaction(self, reaction: MatrixReaction) -> SentMessage:
        out = self.conn.outgoing
        return await self.conn.calls.retrying(
            lambda: out.reaction(self.account, self.user_id, reaction)
        )

    async def handle_matrix_reaction_remove(self, removal: MatrixReactionRemove) -> None:
        out = self.conn.outgoing
        await self.conn.calls.retrying(lambda: out.reaction_remove(self.account, removal))

    async def handle_matrix_membership(self, change: MatrixMembership) -> None:
        await self.conn.groups.membership(self.account, self.user_id, change)

    async def handle_matrix_room_meta(self, change: MatrixRoomMeta) -> None:
        await self.conn.groups.room_meta(self.account, change)

    async def handle_matrix_receipt(self, receipt: MatrixReceipt) -> None:
        await self.conn.outgoing.receipt(self.account, self.user_id, receipt)


class DeltaChatConnector(NetworkConnector):
    name = "deltachat"
    migrations = MIGRATIONS
    display_name = "Delta Chat"
    example_config = "connectors/deltachat/config.py"
    login_help = "<address> <password>: your own Delta Chat (e-mail) account"

    def __init__(self, bridge: Any, config: Any) -> None:
        super().__init__(bridge, config)
        self.cfg: DeltaChatConfig = parse_config(config)
        self.rpc = Rpc(
            self.cfg.accounts_dir / "accounts",
            self._on_event,
            self.log,
            on_restart=self._on_core_restart,
        )
        self.started = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        outdir = self.cfg.accounts_dir / "outgoing"
        self.store = Store()
        self.calls = CoreCalls(self.rpc, self.cfg.send_timeout)
        self.accounts = Accounts(self.rpc, self.cfg, bridge, self.store, self.log)
        self.connectivity = Connectivity(self.rpc, self.accounts, bridge, self.log)
        self.contacts = Contacts(self.rpc, self.accounts)
        self.chats = Chats(
            self.rpc, self.calls, self.store, self.cfg, self.accounts, self.contacts, self.log
        )
        self.deliveries = Deliveries(self.rpc, bridge)
        self.own_sends = OwnSends()
        self.groups = Groups(
            bridge,
            self.rpc,
            self.calls,
            self.store,
            self.cfg,
            self.accounts,
            self.contacts,
            self.chats,
            outdir,
            self.log,
            self._spawn,
        )
        self.outgoing = MatrixToDeltaChat(
            bridge,
            self.rpc,
            self.calls,
            self.store,
            self.cfg,
            self.accounts,
            self.chats,
            self.deliveries,
            self.own_sends,
            outdir,
        )
        self.incoming = DeltaChatToMatrix(
            bridge,
            self.rpc,
            self.store,
            self.cfg,
            self.accounts,
            self.contacts,
            self.chats,
            self.groups,
            self.deliveries,
            self.own_sends,
            self.log,
        )
        self._commands = Commands(self.rpc, self.calls, self.accounts, self.groups, self.started)

    @classmethod
    def validate_config(cls, config: Any) -> None:
        parse_config(config)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.setup(self.bridge.database())
        self.outgoing.outdir.mkdir(parents=True, exist_ok=True)
        try:
            await self.rpc.start()
        except (OSError, RpcDown) as e:
            raise ConnectorError(f"the Delta Chat core did not start: {e}") from e
        await self.accounts.start()
        self.deliveries.start()
        self.started.set()

    async def stop(self) -> None:
        self.deliveries.stop()
        for t in list(self._tasks):
            t.cancel()
        await self.rpc.close()

    async def connection_states(self) -> list[RemoteConnection]:
        """ConnectionReporting: each account's IMAP/SMTP connectivity, as the core reports it
        (>= 3000 connected or fetching, >= 2000 connecting, below: not connected)."""
        out = []
        for acc in list(self.accounts.addr_of_account):
            try:
                level = int(await asyncio.wait_for(self.rpc.call("get_connectivity", acc), 2))
            except (RpcError, RpcDown, TimeoutError, ValueError, TypeError):
                level = 0  # the core is down or does not know it: not connected
            if level >= 3000:
                state = ConnectionState.CONNECTED
            elif level >= 2000:
                state = ConnectionState.CONNECTING
            else:
                state = ConnectionState.DISCONNECTED
            out.append(RemoteConnection(ids.NETWORK, state))
        return out

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_event(self, account: int, event: dict[str, Any]) -> None:
        await self.connectivity.on_event(account, event)
        await self.incoming.on_event(account, event)

    async def _on_core_restart(self) -> None:
        await self.accounts.restart_io()

    # --- identifiers ----------------------------------------------------------------------

    def namespaces(self) -> list[Namespace]:
        return [Namespace(network=ids.NETWORK, prefix="deltachat_", description="Delta Chat")]

    def ghost_localpart(self, network: str, remote_user_id: str) -> str:
        return escape_localpart(remote_user_id.lower())

    def parse_ghost_localpart(self, network: str, localpart: str) -> str | None:
        return ids.parse_ghost_localpart(localpart)

    def alias_localpart(self, network: str, remote_room_id: str) -> str:
        return ids.alias_localpart(remote_room_id, self.store.grpid_of)

    def parse_alias_localpart(self, network: str, localpart: str) -> str | None:
        return ids.parse_alias_localpart(localpart, self.store.handle_of)

    def canonical_room_id(self, network: str, remote_room_id: str) -> str | None:
        handle = self.parse_alias_localpart(network, self.alias_localpart(network, remote_room_id))
        if handle is None or handle not in self.store.grpid_of:
            # Not a group the bridge knows (an invite link it has yet to join, say): the name
            # as typed, which resolve_portal joins or refuses.
            return remote_room_id
        return handle

    # --- portals and ghosts ---------------------------------------------------------------

    async def resolve_portal(self, portal: PortalKey, user: MatrixUser | None) -> ChatInfo | None:
        await self.started.wait()
        if portal.receiver:
            account = self.accounts.speaking_for(portal.receiver)
            name = await self.contacts.display_name(account, portal.remote_id)
            return ChatInfo(name=name, is_direct=True)
        return await self.groups.resolve(portal.remote_id, user)

    async def resolve_ghost(self, network: str, remote_user_id: str) -> GhostInfo | None:
        if not valid_address(remote_user_id):
            return None
        await self.started.wait()
        account = self.accounts.bridge_account
        return GhostInfo(display_name=await self.contacts.display_name(account, remote_user_id))

    async def portal_opened(self, portal: PortalKey) -> None:
        await self.groups.portal_opened(portal)

    async def portal_closed(self, portal: PortalKey) -> None:
        self.groups.portal_closed(portal)

    async def client_for(self, user: MatrixUser, portal: PortalKey) -> NetworkClient | None:
        await self.started.wait()
        account = self.accounts.account_of_user.get(user.user_id)
        if account is None:
            return None
        if portal.receiver:
            if portal.receiver != user.user_id:
                return None
        elif not await self.groups.puppet_ready(account, portal.remote_id):
            return None
        return DeltaChatClient(self, account, user.user_id)

    async def relay_client(self, portal: PortalKey) -> NetworkClient | None:
        await self.started.wait()
        if portal.receiver:
            account = self.accounts.speaking_for(portal.receiver)
            return DeltaChatClient(self, account, self.accounts.user_of_account.get(account))
        return DeltaChatClient(self, self.accounts.bridge_account, None)

    # --- capabilities: logins, DMs, plumbing, history, commands ---------------------------

    async def login(self, user: MatrixUser, args: list[str]) -> LoginResult:
        return await self.accounts.login(user, args)

    async def logout(self, login: Login) -> None:
        account = self.accounts.account_of_user.get(login.user_id)
        await self.accounts.logout(login)
        self.connectivity.forget(login.user_id, login.login_id, account)

    async def open_dm(self, user: MatrixUser, network: str, remote_user_id: str) -> PortalKey:
        return await self.chats.open_dm(user.user_id, remote_user_id)

    async def link(self, user: MatrixUser, portal: PortalKey) -> ChatInfo:
        return await self.groups.link(user, portal)

    async def fetch_history(self, portal: PortalKey, limit: int) -> list[RemoteMessage]:
        return await self.incoming.history(portal, limit)

    def commands(self) -> list[ConnectorCommand]:
        return self._commands.commands()
