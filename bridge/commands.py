"""Commands Matrix users give the bridge: in their management room (a DM with the bot), or
anywhere with the command prefix (``!mimi link ...``)."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .connector import ChatInfo, ConnectorError, MatrixUser
from .connector.capabilities import ExtraCommands, LoginCapable, Plumbing
from .db import LoginRow, Portal
from .double_puppet import NETWORK
from .matrix.homeserver import MatrixError

if TYPE_CHECKING:
    from .bridge import Bridge

LEVELS = {"relay": 1, "user": 2, "admin": 3}


@dataclass(slots=True)
class Ctx:
    room_id: str
    user: MatrixUser
    args: list[str]
    management: bool


Handler = Callable[[Ctx], Awaitable[str]]


@dataclass(slots=True)
class Command:
    handler: Handler
    usage: str
    help: str
    level: str = "user"


class CommandProcessor:
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.commands: dict[str, Command] = {
            "help": Command(self.cmd_help, "help", "this list", "relay"),
            "ping": Command(self.cmd_ping, "ping", "check the bridge and your logins", "relay"),
            "list": Command(self.cmd_list, "list", "your logins and the portals you are in"),
            "login": Command(self.cmd_login, "login <network> ...", "log in to a network"),
            "logout": Command(self.cmd_logout, "logout <network> [login]", "forget a login"),
            "join": Command(self.cmd_join, "join <network> <room>", "open a portal and join it"),
            "link": Command(
                self.cmd_link,
                "link <network> <room> [matrix room]",
                "bridge an existing Matrix room (room admins only)",
            ),
            "unlink": Command(
                self.cmd_unlink, "unlink [matrix room]", "stop bridging a room (room admins only)"
            ),
        }

    def welcome(self) -> str:
        return (
            "Hello, I am the mimi-bridge bot. This room is your management room: "
            "type `help` for the commands."
        )

    async def maybe_handle(self, room_id: str, sender: str, content: dict[str, Any]) -> bool:
        """Run a command if the message is one. True when it was (or was refused)."""
        if content.get("msgtype") != "m.text" or not isinstance(content.get("body"), str):
            return False
        body = content["body"].strip()
        prefix = self.bridge.cfg.command_prefix
        management = await self.bridge.users.is_management_room(room_id) == sender
        if body.startswith(prefix + " ") or body == prefix:
            body = body[len(prefix) :].strip()
        elif not management:
            return False
        try:
            words = shlex.split(body)
        except ValueError:
            words = body.split()
        if not words:
            words = ["help"]
        perm = self.bridge.permission_of(sender)
        if perm is None:
            await self.reply(room_id, "You may not use this bridge.")
            return True
        user = await self.bridge.matrix_user(sender)
        reply = await self.run(Ctx(room_id, user, words[1:], management), words[0].lower())
        await self.reply(room_id, reply)
        return True

    async def run(self, ctx: Ctx, name: str) -> str:
        cmd = self.commands.get(name)
        if cmd is None:
            return await self.connector_command(ctx, name)
        if LEVELS[ctx.user.permission] < LEVELS[cmd.level]:
            return f"`{name}` needs the `{cmd.level}` permission; you have `{ctx.user.permission}`."
        try:
            return await cmd.handler(ctx)
        except ConnectorError as e:
            return f"{name} failed: {e}"
        except MatrixError as e:
            return f"{name} failed on the homeserver: {e}"
        except Exception:
            self.bridge.log.exception("command %s failed", name)
            return f"{name} failed because of an internal error."

    async def connector_command(self, ctx: Ctx, name: str) -> str:
        """``<network> <command> ...`` or a command only one connector has."""
        args = ctx.args
        candidates = []
        for connector in self.bridge.connectors.values():
            if not isinstance(connector, ExtraCommands):
                continue
            for cmd in connector.commands():
                if connector.name == name and args and cmd.name == args[0]:
                    candidates = [(cmd, args[1:])]
                    break
                if cmd.name == name:
                    candidates.append((cmd, args))
            if candidates and connector.name == name:
                break
        if len(candidates) != 1:
            hint = "ambiguous command" if candidates else "unknown command"
            return f"{hint} `{name}`: type `help` for the list."
        cmd, rest = candidates[0]
        if cmd.admin_only and ctx.user.permission != "admin":
            return f"`{cmd.name}` needs the `admin` permission."
        if LEVELS.get(ctx.user.permission, 0) < LEVELS["user"]:
            return f"`{cmd.name}` needs the `user` permission."
        try:
            return await cmd.handler(ctx.user, rest)
        except ConnectorError as e:
            return f"{cmd.name} failed: {e}"
        except Exception:
            self.bridge.log.exception("connector command %s failed", cmd.name)
            return f"{cmd.name} failed because of an internal error."

    async def reply(self, room_id: str, text: str) -> None:
        await self.bridge.send_notice(room_id, text)

    # --- helpers ----------------------------------------------------------------------

    def _network(self, name: str) -> str:
        """A network id from what the user typed: a namespace network or a connector name
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

    async def _room_admin(self, room_id: str, user: MatrixUser) -> bool:
        if user.permission == "admin":
            return True
        if user.user_id in await self.bridge.hs.room_creators(room_id):
            return True  # room v12: creators outrank every power level
        levels = await self.bridge.hs.get_state(room_id, "m.room.power_levels") or {}
        users = levels.get("users") or {}
        mine = users.get(user.user_id, levels.get("users_default", 0))
        needed = levels.get("state_default", 50)
        return isinstance(mine, int) and isinstance(needed, int) and mine >= needed

    async def _target_room(self, ctx: Ctx, arg: str | None) -> str:
        if arg is None:
            if ctx.management:
                raise ConnectorError("name the Matrix room (an id or an alias)")
            return ctx.room_id
        if arg.startswith("#"):
            room = await self.bridge.hs.resolve_alias(arg)
            if room is None:
                raise ConnectorError(f"no room {arg}")
            return room
        return arg

    # --- commands ---------------------------------------------------------------------

    async def cmd_help(self, ctx: Ctx) -> str:
        lines = [
            "Commands (prefix them with `"
            + self.bridge.cfg.command_prefix
            + "` outside this room):"
        ]
        for cmd in self.commands.values():
            if LEVELS[ctx.user.permission] >= LEVELS[cmd.level]:
                lines.append(f"- `{cmd.usage}`: {cmd.help}")
        for connector in self.bridge.connectors.values():
            if isinstance(connector, LoginCapable):
                lines.append(f"- `login {connector.name} {connector.login_help}`")
            if isinstance(connector, ExtraCommands):
                for c in connector.commands():
                    lines.append(f"- `{connector.name} {c.name} {c.args}`: {c.help}")
        if self.bridge.cfg.double_puppet.allow_login and LEVELS[ctx.user.permission] >= 2:
            lines.append(
                "- `login matrix <access token> [homeserver address]`: what you write from "
                "your other clients shows as yours (`logout matrix` to stop)"
            )
        lines.append("Networks: " + (", ".join(sorted(self.bridge.networks)) or "none"))
        return "\n".join(lines)

    async def cmd_ping(self, ctx: Ctx) -> str:
        t0 = time.monotonic()
        await self.bridge.hs.versions()
        ms = (time.monotonic() - t0) * 1000
        logins = await self.bridge.users.logins(user_id=ctx.user.user_id)
        state = ", ".join(f"{r.network}/{r.login_id}: {r.state}" for r in logins) or "no logins"
        return f"Pong. Homeserver answered in {ms:.0f} ms. Logins: {state}."

    async def cmd_list(self, ctx: Ctx) -> str:
        logins = await self.bridge.users.logins(user_id=ctx.user.user_id)
        lines = [
            "Logins: "
            + (", ".join(f"{r.network} {r.remote_name or r.login_id}" for r in logins) or "none")
        ]
        for p in await self.bridge.portal_store.all():
            if p.room_id and self.bridge.hs.is_joined(p.room_id, ctx.user.user_id):
                lines.append(f"- {p.key.network} {p.key.remote_id}: {p.room_id}")
        return "\n".join(lines)

    async def cmd_login(self, ctx: Ctx) -> str:
        if not ctx.args:
            return "usage: login <network> ..."
        if ctx.args[0].lower() == NETWORK:
            if not ctx.management:
                return "Log in only in your management room: your token would be visible here."
            return await self.bridge.double_puppets.login(ctx.user.user_id, ctx.args[1:])
        connector = self.bridge.connectors.get(ctx.args[0])
        if connector is None and ctx.args[0] in self.bridge.networks:
            connector = self.bridge.connector_of(ctx.args[0])
        if connector is None:
            return f"unknown network {ctx.args[0]!r}"
        if not isinstance(connector, LoginCapable):
            return f"{connector.display_name} has no logins; you are puppeted automatically."
        if not ctx.management:
            return "Log in only in your management room: your credentials would be visible here."
        result = await connector.login(ctx.user, ctx.args[1:])
        await self.bridge.users.save_login(
            LoginRow(
                network=connector.name,
                login_id=result.login_id,
                user_id=ctx.user.user_id,
                credentials=self.bridge.credentials.seal(dict(result.credentials)),
                remote_name=result.remote_name,
                metadata=json.dumps({}),
            )
        )
        return result.message or f"Logged in to {connector.display_name} as {result.login_id}."

    async def cmd_logout(self, ctx: Ctx) -> str:
        if not ctx.args:
            return "usage: logout <network> [login]"
        if ctx.args[0].lower() == NETWORK:
            return await self.bridge.double_puppets.logout(ctx.user.user_id)
        connector = self.bridge.connectors.get(ctx.args[0])
        if connector is None:
            return f"unknown network {ctx.args[0]!r}"
        rows = [
            r
            for r in await self.bridge.users.logins(
                user_id=ctx.user.user_id, network=connector.name
            )
            if len(ctx.args) < 2 or r.login_id == ctx.args[1]
        ]
        if not rows:
            return f"You have no {connector.display_name} login."
        for row in rows:
            if isinstance(connector, LoginCapable):
                logins = [
                    lg
                    for lg in await self.bridge.logins(connector.name)
                    if lg.login_id == row.login_id
                ]
                for lg in logins:
                    await connector.logout(lg)
            await self.bridge.users.delete_login(row.network, row.login_id)
        return f"Logged out of {connector.display_name}."

    async def cmd_join(self, ctx: Ctx) -> str:
        if len(ctx.args) < 2:
            return "usage: join <network> <room>"
        network = self._network(ctx.args[0])
        key = self.bridge.portal_key(network, ctx.args[1])
        if key is None:
            return f"{ctx.args[1]} was not found on {network}."
        portal = await self.bridge.portal_mgr.open_portal(key, ctx.user.user_id, invite_user=True)
        if portal is None:
            return f"{ctx.args[1]} was not found on {network}."
        return f"Invited you to {self.bridge.alias_of(key)} ({portal.room_id})."

    async def cmd_link(self, ctx: Ctx) -> str:
        if len(ctx.args) < 2:
            return "usage: link <network> <room> [matrix room]"
        network = self._network(ctx.args[0])
        room_id = await self._target_room(ctx, ctx.args[2] if len(ctx.args) > 2 else None)
        if not await self._room_admin(room_id, ctx.user):
            return "Only room admins may link a room."
        if await self.bridge.portal_store.by_room(room_id):
            return "This room is already bridged; unlink it first."
        key = self.bridge.portal_key(network, ctx.args[1])
        if key is None:
            return f"{ctx.args[1]} was not found on {network}."
        existing = await self.bridge.portal_store.get(key)
        if existing and existing.room_id:
            return f"{ctx.args[1]} is already bridged to {existing.room_id}."
        connector = self.bridge.connector_of(network)
        info: ChatInfo | None
        if isinstance(connector, Plumbing):
            info = await connector.link(ctx.user, key)
        else:
            info = await connector.resolve_portal(key, ctx.user)
        if info is None:
            return f"{ctx.args[1]} was not found on {network}."
        if not self.bridge.hs.is_joined(room_id, self.bridge.cfg.bot_mxid):
            await self.bridge.hs.join(room_id)
        crypto = self.bridge.crypto
        if self.bridge.cfg.encryption.require and crypto and not await crypto.is_encrypted(room_id):
            return "This bridge bridges only encrypted rooms: turn on encryption there first."
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
                " The bot has no power to set the room's bridge info: give it power level 100"
                " so that it can also moderate for the network."
            )
        await connector.portal_opened(key)
        return f"Linked {room_id} with {ctx.args[1]} on {network}.{note}"

    async def cmd_unlink(self, ctx: Ctx) -> str:
        room_id = await self._target_room(ctx, ctx.args[0] if ctx.args else None)
        portal = await self.bridge.portal_store.by_room(room_id)
        if portal is None:
            return "This room is not bridged."
        if not await self._room_admin(room_id, ctx.user):
            return "Only room admins may unlink a room."
        await self.bridge.portal_mgr.clear_bridge_info(portal)
        await self.bridge.connector_of(portal.key.network).portal_closed(portal.key)
        await self.bridge.portal_store.delete(portal.key)
        return f"Unlinked {room_id} from {portal.key.remote_id}."
