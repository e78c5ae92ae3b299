"""``webhook create|list|rotate|delete|outgoing``, typed in the room the hook speaks in (room
admins and bridge admins only). Tokens are shown once, at creation and rotation. ``create`` in
a room not bridged yet bridges it first (to a channel named after the room), so one command
sets a room up."""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable

from bridge.connector import CommandRoom, ConnectorCommand, ConnectorError, MatrixUser, PortalKey

from .store import Hook, Store, token_hash

NETWORK = "webhooks"
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_NOT_CHANNEL = re.compile(r"[^A-Za-z0-9._=-]")

# (user id, Matrix room id, portal): bridge the room as the user's ``link`` would.
LinkRoom = Callable[[str, str, PortalKey], Awaitable[None]]
USAGE = (
    "usage: webhook create [name] | webhook list | webhook rotate <name> | "
    "webhook delete <name> | webhook outgoing <name> <url|off>"
)


def channel_for(room_id: str) -> str:
    """The channel name a room gets when ``webhook create`` bridges it: from the room id,
    stable and unique (room ids are)."""
    local = room_id.lstrip("!").split(":", 1)[0]
    return ("room-" + _NOT_CHANNEL.sub("_", local))[:64]


def new_token() -> str:
    return secrets.token_urlsafe(24)


class HookCommands:
    def __init__(self, store: Store, url_of: Callable[[str], str], link: LinkRoom) -> None:
        self.store = store
        self.url_of = url_of  # token -> the hook's public URL
        self.link = link

    def commands(self) -> list[ConnectorCommand]:
        return [
            ConnectorCommand(
                "webhook",
                "manage this room's webhooks: create, list, rotate, delete, outgoing",
                args="create [name] | list | rotate <name> | delete <name>"
                " | outgoing <name> <url|off>",
                room_handler=self.run,
            )
        ]

    async def run(self, user: MatrixUser, args: list[str], room: CommandRoom) -> str:
        if (room.portal is None or room.portal.network != NETWORK) and args[:1] == ["create"]:
            if room.management:
                raise ConnectorError(
                    "type `webhook create` in the room the hook should post to, not here"
                )
            if not room.room_admin:
                raise ConnectorError("only room admins may manage this room's webhooks")
            portal = PortalKey(NETWORK, channel_for(room.room_id))
            await self.link(user.user_id, room.room_id, portal)
            made = await self.create(user, portal.remote_id, args[1] if len(args) > 1 else None)
            return f"Bridged this room to webhooks (channel {portal.remote_id}). {made}"
        if room.portal is None or room.portal.network != NETWORK:
            raise ConnectorError(
                "this room is not a webhooks room yet: bridge it first with"
                " `link webhooks <name>` (in the room), or join `#webhook_<name>` on this server"
            )
        if not room.room_admin:
            raise ConnectorError("only room admins may manage this room's webhooks")
        if not args:
            return USAGE
        verb, rest = args[0].lower(), args[1:]
        channel = room.portal.remote_id
        if verb == "create":
            return await self.create(user, channel, rest[0] if rest else None)
        if verb == "list":
            return await self.list(channel)
        if verb in ("rotate", "delete", "outgoing") and rest:
            hook = await self.store.by_name(channel, rest[0])
            if hook is None:
                raise ConnectorError(f"this room has no webhook {rest[0]!r}")
            if verb == "rotate":
                token = new_token()
                await self.store.set_token(hook.id, token)
                return f"New URL of {hook.name!r} (the old one stops working): {self.url_of(token)}"
            if verb == "delete":
                await self.store.delete(hook.id)
                return f"Deleted the webhook {hook.name!r}; its URL answers 404 from now on."
            if len(rest) == 2:
                return await self.outgoing(hook, rest[1])
        return USAGE

    async def create(self, user: MatrixUser, channel: str, name: str | None) -> str:
        existing = {h.name for h in await self.store.in_room(channel)}
        if name is None:
            name = next(
                f"hook{n}" if n > 1 else "hook"
                for n in range(1, 10_000)
                if (f"hook{n}" if n > 1 else "hook") not in existing
            )
        if not _NAME.match(name):
            raise ConnectorError("a webhook name is 1 to 64 letters, digits, '.', '_' or '-'")
        if name in existing:
            raise ConnectorError(f"this room already has a webhook {name!r}")
        token = new_token()
        hook = Hook(
            id="h" + secrets.token_hex(6),
            room=channel,
            name=name,
            token_hash=token_hash(token),
            created_by=user.user_id,
        )
        await self.store.add(hook)
        return (
            f"Created the webhook {name!r}. POST to this secret URL (keep it private; it is"
            f" shown only now): {self.url_of(token)}"
        )

    async def list(self, channel: str) -> str:
        hooks = await self.store.in_room(channel)
        if not hooks:
            return "This room has no webhooks."
        lines = ["Webhooks of this room (URLs are secret and not shown again):"]
        for h in hooks:
            out = f", posts messages to {h.outgoing_url}" if h.outgoing_url else ""
            lines.append(f"- {h.name} (created by {h.created_by}{out})")
        return "\n".join(lines)

    async def outgoing(self, hook: Hook, url: str) -> str:
        if url.lower() == "off":
            await self.store.set_outgoing(hook.id, None, None)
            return f"The webhook {hook.name!r} no longer posts this room's messages."
        if not url.startswith(("http://", "https://")):
            raise ConnectorError("the outgoing URL must start with http:// or https://")
        secret = secrets.token_hex(16)
        await self.store.set_outgoing(hook.id, url, secret)
        return (
            f"The webhook {hook.name!r} now posts this room's messages to {url}, signed with"
            f" HMAC-SHA256 in X-Mimi-Signature; the secret (shown only now) is {secret}"
        )
