"""The connector's commands in a management room: ``deltachat invite [group]`` and
``deltachat status``."""

from __future__ import annotations

import asyncio

from bridge.connector import ConnectorCommand, MatrixUser

from .accounts import Accounts
from .calls import CoreCalls
from .groups import Groups
from .rpc import Rpc


class Commands:
    def __init__(
        self,
        rpc: Rpc,
        calls: CoreCalls,
        accounts: Accounts,
        groups: Groups,
        started: asyncio.Event,
    ) -> None:
        self.rpc = rpc
        self.calls = calls
        self.accounts = accounts
        self.groups = groups
        self.started = started

    def commands(self) -> list[ConnectorCommand]:
        return [
            ConnectorCommand(
                "invite",
                "an invite link: your own account's (or the bridge's) for direct chats, or a"
                " linked group's",
                self.invite,
                args="[group]",
            ),
            ConnectorCommand("status", "the Delta Chat core and its accounts", self.status),
        ]

    async def invite(self, user: MatrixUser, args: list[str]) -> str:
        await self.started.wait()
        if args:
            link = await self.groups.invite_link(" ".join(args))
            return f"Delta Chat users join the group with: {link}"
        account = self.accounts.speaking_for(user.user_id)
        link = await self.calls.call("get_chat_securejoin_qr_code", account, None)
        whose = "your" if account != self.accounts.bridge_account else "the bridge's"
        return f"Scan or open {whose} Delta Chat invite link to start a chat: {link}"

    async def status(self, user: MatrixUser, args: list[str]) -> str:
        if not self.rpc.is_up:
            return "The Delta Chat core is not running (restarting)."
        lines = [f"Delta Chat core running (pid {self.rpc.pid}, restarts: {self.rpc.restarts})."]
        for acc, addr in sorted(self.accounts.addr_of_account.items()):
            owner = self.accounts.user_of_account.get(acc)
            if user.permission != "admin" and owner != user.user_id:
                continue
            conn = await self.rpc.call("get_connectivity", acc)
            lines.append(f"- {addr} ({owner or 'bridge'}): connectivity {conn}")
        return "\n".join(lines)
