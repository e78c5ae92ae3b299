"""Commands Matrix users give the bridge: in their management room (a DM with the bot), or
anywhere with the command prefix (``!mimi link ...``)."""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .actions import LEVELS, Refused, UserActions
from .connector import ConnectorError, MatrixUser
from .connector.capabilities import CommandRoom, ExtraCommands, LoginCapable
from .double_puppet import NETWORK
from .matrix.homeserver import MatrixError

if TYPE_CHECKING:
    from .bridge import Bridge


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
        self.actions = UserActions(bridge)
        self.commands: dict[str, Command] = {
            "help": Command(self.cmd_help, "help", "this list", "relay"),
            "ping": Command(self.cmd_ping, "ping", "check the bridge and your logins", "relay"),
            "list": Command(self.cmd_list, "list", "your logins and the portals you are in"),
            "login": Command(self.cmd_login, "login <network> ...", "log in to a network"),
            "logout": Command(self.cmd_logout, "logout <network> [login]", "forget a login"),
            "join": Command(
                self.cmd_join,
                "join <network> <room> [key]",
                "open a portal and join it (with the room's key, if it has one)",
            ),
            "link": Command(
                self.cmd_link,
                "link <network> <room> [matrix room]",
                "bridge an existing Matrix room (room admins only)",
            ),
            "unlink": Command(
                self.cmd_unlink, "unlink [matrix room]", "stop bridging a room (room admins only)"
            ),
        }
        # Commands finishing aside (a link waiting for the network's consent), so that the
        # room's later events are not held up meanwhile.
        self._aside: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for task in list(self._aside):
            task.cancel()
        await asyncio.gather(*self._aside, return_exceptions=True)

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
        if reply:  # empty: the command answers when it finishes aside
            await self.reply(room_id, reply)
        return True

    async def run(self, ctx: Ctx, name: str) -> str:
        cmd = self.commands.get(name)
        if cmd is None:
            return await self.connector_command(ctx, name)
        if LEVELS[ctx.user.permission] < LEVELS[cmd.level]:
            return f"`{name}` needs the `{cmd.level}` permission; you have `{ctx.user.permission}`."
        return await self._guarded(name, cmd.handler(ctx))

    async def _guarded(self, name: str, work: Awaitable[str]) -> str:
        """What a command says, its failures included (never a traceback)."""
        try:
            return await work
        except Refused as e:
            return str(e)
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
            if cmd.room_handler is not None:
                return await cmd.room_handler(ctx.user, rest, await self._command_room(ctx))
            if cmd.handler is None:
                return f"`{cmd.name}` cannot be run."
            return await cmd.handler(ctx.user, rest)
        except ConnectorError as e:
            return f"{cmd.name} failed: {e}"
        except Exception:
            self.bridge.log.exception("connector command %s failed", cmd.name)
            return f"{cmd.name} failed because of an internal error."

    async def _command_room(self, ctx: Ctx) -> CommandRoom:
        """The room a connector's room command was typed in, as the connector sees it."""
        portal = await self.bridge.portal_store.by_room(ctx.room_id)
        return CommandRoom(
            room_id=ctx.room_id,
            portal=portal.key if portal else None,
            room_admin=await self.actions.room_admin(ctx.room_id, ctx.user),
            management=ctx.management,
        )

    async def reply(self, room_id: str, text: str) -> None:
        await self.bridge.send_notice(room_id, text)

    # --- helpers ----------------------------------------------------------------------

    async def _target_room(self, ctx: Ctx, arg: str | None) -> str:
        if arg is None:
            if ctx.management:
                raise ConnectorError("name the Matrix room (an id or an alias)")
            return ctx.room_id
        return await self.actions.room_id(arg)

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
        views = await self.actions.login_views(ctx.user)
        state = "; ".join(f"{v.network}/{v.login_id}: {v.describe()}" for v in views)
        return f"Pong. Homeserver answered in {ms:.0f} ms. Logins: {state or 'no logins'}."

    async def cmd_list(self, ctx: Ctx) -> str:
        views = await self.actions.login_views(ctx.user)
        lines = ["Logins:" if views else "Logins: none"]
        for v in views:
            lines.append(f"- {v.network} {v.remote_name or v.login_id}: {v.describe()}")
        portals = await self.actions.portals(ctx.user)
        if portals:
            lines.append("Portals:")
        for p in portals:
            lines.append(f"- {p.key.network} {p.key.remote_id}: {p.room_id}")
        return "\n".join(lines)

    async def cmd_login(self, ctx: Ctx) -> str:
        if not ctx.args:
            return "usage: login <network> ..."
        if ctx.args[0].lower() == NETWORK:
            if not ctx.management:
                return "Log in only in your management room: your token would be visible here."
            return await self.bridge.double_puppets.login(ctx.user.user_id, ctx.args[1:])
        connector = self.actions.login_connector(ctx.args[0])
        if not ctx.management:
            return "Log in only in your management room: your credentials would be visible here."
        result = await self.actions.login(ctx.user, connector, ctx.args[1:])
        return result.message or f"Logged in to {connector.display_name} as {result.login_id}."

    async def cmd_logout(self, ctx: Ctx) -> str:
        if not ctx.args:
            return "usage: logout <network> [login]"
        if ctx.args[0].lower() == NETWORK:
            return await self.bridge.double_puppets.logout(ctx.user.user_id)
        connector = self.actions.connector_named(ctx.args[0])
        await self.actions.logout(ctx.user, connector, ctx.args[1] if len(ctx.args) > 1 else None)
        return f"Logged out of {connector.display_name}."

    def _network_args(self, args: list[str]) -> tuple[str, list[str]]:
        """``<network> rest`` where the network is an id (``irc_libera``), a connector with
        one network (``irc``), or a connector and one of its networks (``irc libera``)."""
        connector = self.bridge.connectors.get(args[0])
        if connector is not None and len(args) > 2:
            for ns in connector.namespaces():
                if ns.network in (args[1], f"{connector.name}_{args[1]}"):
                    return ns.network, args[2:]
        return self.actions.network_id(args[0]), args[1:]

    async def cmd_join(self, ctx: Ctx) -> str:
        if len(ctx.args) < 2:
            return "usage: join <network> <room> [key]"
        network, rest = self._network_args(ctx.args)
        if not rest or len(rest) > 2:
            return "usage: join <network> <room> [key]"
        key = rest[1] if len(rest) > 1 else None
        portal = await self.actions.join(ctx.user, network, rest[0], key)
        return f"Invited you to {self.bridge.alias_of(portal.key)} ({portal.room_id})."

    async def cmd_link(self, ctx: Ctx) -> str:
        if len(ctx.args) < 2:
            return "usage: link <network> <room> [matrix room]"
        network, rest = self._network_args(ctx.args)
        if not rest or len(rest) > 2:
            return "usage: link <network> <room> [matrix room]"
        room_id = await self._target_room(ctx, rest[1] if len(rest) > 1 else None)
        remote_id = rest[0]

        async def tell(text: str) -> None:
            await self.reply(ctx.room_id, text)

        async def link() -> str:
            linked = await self.actions.link(ctx.user, network, remote_id, room_id, tell)
            note = f" {linked.note}" if linked.note else ""
            return f"Linked {room_id} with {remote_id} on {network}.{note}"

        async def aside() -> None:
            await tell(await self._guarded("link", link()))

        # The network's side may take minutes to answer: the room's queue goes on meanwhile.
        task = asyncio.get_running_loop().create_task(aside())
        self._aside.add(task)
        task.add_done_callback(self._aside.discard)
        return ""

    async def cmd_unlink(self, ctx: Ctx) -> str:
        room_id = await self._target_room(ctx, ctx.args[0] if ctx.args else None)
        portal = await self.actions.unlink(ctx.user, room_id)
        return f"Unlinked {room_id} from {portal.key.remote_id}."
