"""The connectivity of each Matrix user's Delta Chat account, pushed to the core at every
change (``ConnectivityChanged``), so that the user hears when their account loses the mail
server, cannot log in, or comes back.

The core's connectivity levels: >= 3000 connected (or fetching), >= 2000 connecting, below:
not connected. A refused IMAP login shows only in the core's warnings ("IMAP failed to login",
"Cannot login as ..."); it is remembered until the account connects again, so that the next
"not connected" is told as a refused login (log in again) rather than an outage."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bridge.connector import BridgeAPI, ConnectionChange, ConnectionState

from .accounts import Accounts
from .ids import NETWORK
from .rpc import Rpc, RpcDown, RpcError

_REFUSED = ("failed to login", "cannot login", "authentication failed")


def state_of(level: int) -> ConnectionState:
    if level >= 3000:
        return ConnectionState.CONNECTED
    if level >= 2000:
        return ConnectionState.CONNECTING
    return ConnectionState.DISCONNECTED


class Connectivity:
    def __init__(self, rpc: Rpc, accounts: Accounts, bridge: BridgeAPI, log: logging.Logger):
        self.rpc = rpc
        self.accounts = accounts
        self.bridge = bridge
        self.log = log
        self._refused: dict[int, str] = {}  # account -> the core's words
        self.refusals: dict[int, int] = {}  # account -> refused logins seen (for the logs)

    async def level(self, account: int) -> int:
        try:
            return int(await asyncio.wait_for(self.rpc.call("get_connectivity", account), 5))
        except (RpcError, RpcDown, TimeoutError, ValueError, TypeError):
            return 0  # the core is down or does not know it: not connected

    async def on_event(self, account: int, event: dict[str, Any]) -> None:
        user_id = self.accounts.user_of_account.get(account)
        address = self.accounts.addr_of_account.get(account)
        if user_id is None or address is None:
            return  # the bridge's own account: its state is the admin's, in the metrics
        kind = event.get("kind")
        if kind in ("Warning", "Error"):
            text = str(event.get("msg") or "")
            if any(word in text.lower() for word in _REFUSED):
                self._refused[account] = text
                self.refusals[account] = self.refusals.get(account, 0) + 1
                self.log.info("%s: login refused (%s)", address, text)
            return
        if kind != "ConnectivityChanged":
            return
        state = state_of(await self.level(account))
        reason = ""
        refused = self._refused.get(account)
        if state == ConnectionState.CONNECTED:
            self._refused.pop(account, None)
        elif refused is not None and state == ConnectionState.DISCONNECTED:
            state = ConnectionState.FAILED
            reason = f"the mail server refused the login ({refused})"
        elif state == ConnectionState.DISCONNECTED:
            reason = "the mail server is not reachable"
        self.bridge.connection_changed(
            ConnectionChange(
                user_id,
                NETWORK,
                address,
                state,
                reason,
                auth_failed=state == ConnectionState.FAILED,
                remote_name=address,
            )
        )

    def forget(self, user_id: str, address: str, account: int | None) -> None:
        """The user logged out: their account's connection is gone on purpose."""
        if account is not None:
            self._refused.pop(account, None)
        self.bridge.connection_changed(ConnectionChange(user_id, NETWORK, address, None))
