"""The bridge's Delta Chat accounts, all in one core (``deltachat-rpc-server``):

* the bridge's own account (``account`` in the config): the relay, and the member through
  which every bridged group is listened to;
* one puppet account per Matrix user who logged in (``login deltachat <address> <password>``)
  or whom the admin provisioned.

Adding and configuring them, bringing them back at start-up and after a core restart, logins
and logouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from bridge.connector import ConnectorError, Login, LoginResult, MatrixUser

from .config import DeltaChatConfig, valid_address
from .ids import NETWORK
from .rpc import Rpc, RpcDown, RpcError
from .store import Store


class Accounts:
    def __init__(
        self, rpc: Rpc, cfg: DeltaChatConfig, bridge: Any, store: Store, log: logging.Logger
    ) -> None:
        self.rpc = rpc
        self.cfg = cfg
        self.bridge = bridge
        self.store = store
        self.log = log
        self.bridge_account = 0
        self.account_of_addr: dict[str, int] = {}
        self.addr_of_account: dict[int, str] = {}
        self.user_of_account: dict[int, str] = {}
        self.account_of_user: dict[str, int] = {}
        self._lock = asyncio.Lock()

    def is_ours(self, addr: str) -> bool:
        return addr.lower() in self.account_of_addr

    def speaking_for(self, user_id: str) -> int:
        """A Matrix user's puppet account, or the bridge's when they have none."""
        return self.account_of_user.get(user_id, self.bridge_account)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """The accounts the core has, the bridge's own, and every login and provisioned user's."""
        await self._load()
        self.bridge_account = await self.ensure(self.cfg.address, self.cfg.password, bot=True)
        for login in await self.bridge.logins(NETWORK):
            await self._resume_login(login.user_id, login.credentials)
        for user_id, prov in self.cfg.provisioned.items():
            if user_id not in self.account_of_user:
                await self._resume_login(
                    user_id, {"address": prov.address, "password": prov.password}
                )

    async def restart_io(self) -> None:
        """The core came back after a crash: restart IO on every account."""
        for acc in list(self.addr_of_account):
            with contextlib.suppress(RpcError):
                await self.rpc.call("start_io", acc)

    async def _load(self) -> None:
        for acc in await self.rpc.call("get_all_accounts"):
            acc_id = int(acc["id"])
            addr = await self.rpc.call("get_config", acc_id, "configured_addr")
            if acc.get("kind") != "Configured" or not addr:
                # A half-made account (a login interrupted while configuring).
                with contextlib.suppress(RpcError):
                    await self.rpc.call("remove_account", acc_id)
                continue
            self._register(acc_id, addr.lower())

    def _register(self, acc: int, address: str) -> None:
        self.account_of_addr[address] = acc
        self.addr_of_account[acc] = address

    async def ensure(
        self, address: str, password: str, bot: bool = False, user_id: str | None = None
    ) -> int:
        """The core account for ``address``: existing, or added and configured now."""
        address = address.lower()
        async with self._lock:
            acc = self.account_of_addr.get(address)
            if acc is None:
                acc = await self._configure_new(address, password, bot, user_id)
            if user_id is not None:
                self.user_of_account[acc] = user_id
                self.account_of_user[user_id] = acc
            await self.rpc.call("start_io", acc)
            return acc

    async def _configure_new(
        self, address: str, password: str, bot: bool, user_id: str | None
    ) -> int:
        acc = int(await self.rpc.call("add_account"))
        try:
            name = self.cfg.display_name if bot else (user_id or address)
            if user_id is not None:
                with contextlib.suppress(ConnectorError):
                    name = (await self.bridge.matrix_user(user_id)).display_name
            await self.rpc.call("set_config", acc, "displayname", name)
            await self.rpc.call("set_config", acc, "bot", "1" if bot else "0")
            if bot:
                await self.rpc.call("set_config", acc, "mdns_enabled", "0")
            delay = 1.0
            while True:
                try:
                    await self.rpc.call(
                        "add_or_update_transport", acc, self.cfg.transport(address, password)
                    )
                    break
                except RpcError as e:
                    if not bot or "connect" not in str(e).lower():
                        raise
                    # The bridge's own account: wait for the mail server with backoff.
                    self.log.warning("mail server not reachable for %s (%s); retrying", address, e)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 60)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.rpc.call("remove_account", acc)
            raise
        self._register(acc, address)
        self.log.info("Delta Chat account %s configured (%d)", address, acc)
        return acc

    async def _resume_login(self, user_id: str, creds: dict[str, Any]) -> None:
        try:
            await self.ensure(str(creds["address"]), str(creds["password"]), False, user_id)
        except (RpcError, KeyError) as e:
            self.log.error("Delta Chat login of %s not started: %s", user_id, e)
            await self.bridge.notify(user_id, f"Your Delta Chat login could not be resumed: {e}")

    # --- logins ---------------------------------------------------------------------------

    async def login(self, user: MatrixUser, args: list[str]) -> LoginResult:
        if not self.cfg.logins_enabled:
            raise ConnectorError("logins are disabled on this bridge")
        if len(args) != 2 or not valid_address(args[0]):
            raise ConnectorError("usage: login deltachat <address> <password>")
        address, password = args[0].lower(), args[1]
        if user.user_id in self.account_of_user:
            raise ConnectorError("you are logged in already: logout deltachat first")
        if address in self.account_of_addr:
            raise ConnectorError(f"{address} is in use by this bridge already")
        try:
            await self.ensure(address, password, False, user.user_id)
        except RpcError as e:
            raise ConnectorError(f"the mail server did not accept the login: {e}") from e
        return LoginResult(
            login_id=address,
            credentials={"address": address, "password": password},
            remote_name=address,
            message=f"Logged in to Delta Chat as {address}.",
        )

    async def logout(self, login: Login) -> None:
        acc = self.account_of_user.pop(login.user_id, None)
        if acc is None:
            return
        self.user_of_account.pop(acc, None)
        addr = self.addr_of_account.pop(acc, None)
        if addr:
            self.account_of_addr.pop(addr, None)
        with contextlib.suppress(RpcError, RpcDown):
            await self.rpc.call("stop_io", acc)
            await self.rpc.call("remove_account", acc)
        await self.store.forget_account(acc)
