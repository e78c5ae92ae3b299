"""The webhooks connector: each hook is a ghost in one room. ``POST /_mimi/webhooks/<token>``
posts to the room as the hook; the room's Matrix messages go to the hooks' outgoing URLs."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp

from bridge.connector import (
    Attachment,
    ChatInfo,
    ConnectorCommand,
    GhostInfo,
    HttpRequest,
    HttpResponse,
    HttpRoute,
    MatrixMessage,
    MatrixUser,
    MessageContent,
    Namespace,
    NetworkClient,
    NetworkConnector,
    PortalKey,
    RemoteEdit,
    RemoteMessage,
    RemoteProfile,
    Sender,
    SentMessage,
)

from . import payloads
from .commands import NETWORK, HookCommands
from .config import WebhooksConfig, validate
from .outgoing import Delivery, Outbound
from .store import Hook, Store

_CHANNEL = re.compile(r"^[A-Za-z0-9._=-]{1,64}$")
ICON_MAX_BYTES = 1024 * 1024
# Slack shortcodes worth showing before a hook's name (Matrix avatars are pictures).
EMOJI = {
    ":rotating_light:": "🚨",
    ":fire:": "🔥",
    ":warning:": "⚠️",
    ":white_check_mark:": "✅",
    ":heavy_check_mark:": "✔️",
    ":x:": "❌",
    ":robot_face:": "🤖",
    ":bell:": "🔔",
    ":rocket:": "🚀",
    ":ghost:": "👻",
}


def _error(status: int, message: str, **headers: str) -> HttpResponse:
    return HttpResponse(status, {"ok": False, "error": message}, dict(headers))


class RateLimiter:
    """A token bucket per hook: ``per_minute`` requests, refilled evenly."""

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str) -> float:
        """0 when allowed, else the seconds to wait."""
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate
        self._buckets[key] = (tokens - 1, now)
        return 0.0


class WebhooksClient(NetworkClient):
    """Speaks for every Matrix user of a webhooks room: their messages go to the room's
    outgoing URLs (none configured: nowhere, which is what the room asked for)."""

    def __init__(self, connector: WebhooksConnector, user: MatrixUser) -> None:
        self.connector = connector
        self.user = user

    async def handle_matrix_message(self, msg: MatrixMessage) -> SentMessage:
        text = msg.content.text
        for att in msg.content.attachments:
            if att.url:
                text += f"\n{att.filename}: {att.url}"
        payload = {
            "team_domain": self.connector.bridge.domain,
            "channel_id": msg.portal.remote_id,
            "channel_name": msg.portal.remote_id,
            "timestamp": f"{msg.timestamp / 1000:.3f}",
            "user_id": msg.sender.user_id,
            "user_name": msg.sender.display_name,
            "text": text,
            "trigger_word": "",
            "event_id": msg.event_id,
        }
        if msg.content.html:
            payload["html"] = msg.content.html
        for hook in await self.connector.store.in_room(msg.portal.remote_id):
            if hook.outgoing_url:
                self.connector.delivery.submit(Outbound(hook, payload))
        return SentMessage(f"matrix-{msg.event_id}")


class WebhooksConnector(NetworkConnector):
    name = "webhooks"
    display_name = "Webhooks"
    example_config = "config.example.yaml, section connectors.webhooks"

    def __init__(self, bridge: Any, config: Mapping[str, Any]) -> None:
        super().__init__(bridge, config)
        self.cfg: WebhooksConfig = validate(config)
        self.store = Store()
        self.limiter = RateLimiter(self.cfg.rate_limit_per_minute)
        self.delivery = Delivery(self.cfg, self._tell_room, self.log)
        self.hook_commands = HookCommands(
            self.store,
            lambda token: self.bridge.public_url(f"/_mimi/webhooks/{token}"),
            self.bridge.link_room,
        )
        self._ready = False
        self._locks: dict[str, asyncio.Lock] = {}
        self._icons: dict[str, str] = {}  # hook id -> icon URL its ghost shows

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> None:
        validate(config)

    async def start(self) -> None:
        await self.store.setup(self.bridge.database())
        await self.delivery.start()
        self._ready = True

    async def stop(self) -> None:
        self._ready = False
        await self.delivery.stop()

    def namespaces(self) -> list[Namespace]:
        return [Namespace(NETWORK, "webhook_", "Webhooks")]

    async def resolve_portal(self, portal: PortalKey, user: MatrixUser | None) -> ChatInfo | None:
        if portal.receiver or not _CHANNEL.match(portal.remote_id):
            return None
        return ChatInfo(name=portal.remote_id, topic="Fed by webhooks: type `webhook create`")

    async def resolve_ghost(self, network: str, remote_user_id: str) -> GhostInfo | None:
        hook = await self.store.by_id(remote_user_id) if self._ready else None
        return GhostInfo(display_name=hook.name) if hook else None

    async def client_for(self, user: MatrixUser, portal: PortalKey) -> NetworkClient | None:
        return WebhooksClient(self, user)

    def commands(self) -> list[ConnectorCommand]:
        return self.hook_commands.commands()

    def http_routes(self) -> list[HttpRoute]:
        return [HttpRoute("POST", "{token}", self.receive, max_body=self.cfg.max_body)]

    async def _tell_room(self, hook: Hook, text: str) -> None:
        await self.bridge.notify(hook.created_by, text, PortalKey(NETWORK, hook.room))

    # --- incoming -------------------------------------------------------------------------

    async def receive(self, req: HttpRequest) -> HttpResponse:
        if not self._ready:
            return _error(503, "the bridge is starting", **{"Retry-After": "5"})
        hook = await self.store.by_token(req.path_params.get("token", ""))
        if hook is None:
            return _error(404, "unknown webhook")
        wait = self.limiter.allow(hook.id)
        if wait:
            return _error(
                429, "too many requests for this webhook", **{"Retry-After": str(int(wait) + 1)}
            )
        try:
            incoming = payloads.parse(
                payloads.decode(req.body, req.headers.get("content-type", ""))
            )
        except payloads.PayloadError as e:
            return _error(400, str(e))
        async with self._locks.setdefault(hook.id, asyncio.Lock()):
            message_id = await self._post(hook, incoming)
        return HttpResponse(200, {"ok": True, "id": message_id})

    async def _post(self, hook: Hook, incoming: payloads.Incoming) -> str:
        portal = PortalKey(NETWORK, hook.room)
        name = incoming.username or hook.name
        emoji = EMOJI.get(incoming.icon_emoji or "", "")
        if not emoji and incoming.icon_emoji and not incoming.icon_emoji.startswith(":"):
            emoji = incoming.icon_emoji  # already an emoji
        sender = Sender(hook.id, f"{emoji} {name}" if emoji else name)
        if incoming.icon_url and self._icons.get(hook.id) != incoming.icon_url:
            await self._set_icon(hook, sender, incoming.icon_url)
        content = MessageContent(text=incoming.text, html=incoming.html)
        group = incoming.alert_group
        previous = await self.store.alert_message(hook.id, group) if group else None
        # A group's notifications edit its message; only a firing after it was shown resolved
        # is news (a repeated "resolved" edits again rather than posting).
        if group and previous and not (previous[1] and not incoming.resolved):
            await self.bridge.emit(
                RemoteEdit(portal=portal, sender=sender, target_id=previous[0], content=content)
            )
            await self.store.set_alert_message(hook.id, group, previous[0], incoming.resolved)
            return previous[0]
        message_id = f"{hook.id}-{uuid.uuid4().hex}"
        if group:
            await self.store.set_alert_message(hook.id, group, message_id, incoming.resolved)
        await self.bridge.emit(
            RemoteMessage(portal=portal, sender=sender, id=message_id, content=content)
        )
        return message_id

    async def _set_icon(self, hook: Hook, sender: Sender, url: str) -> None:
        """The hook's ghost shows the payload's icon. A failure costs the picture only."""
        self._icons[hook.id] = url
        if not self.cfg.fetch_icons or not url.startswith(("http://", "https://")):
            return
        session = self.delivery.session
        assert session is not None
        try:
            async with session.get(url) as resp:
                kind = resp.headers.get("Content-Type", "").split(";")[0]
                if resp.status != 200 or not kind.startswith("image/"):
                    self.log.info("icon %s not used: HTTP %s, %s", url, resp.status, kind)
                    return
                data = await resp.content.read(ICON_MAX_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as e:
            self.log.info("icon %s not fetched: %s", url, e)
            return
        if len(data) > ICON_MAX_BYTES:
            self.log.info("icon %s is over %d bytes; not used", url, ICON_MAX_BYTES)
            return
        avatar = Attachment("icon", kind, data=data, size=len(data))
        await self.bridge.emit(
            RemoteProfile(portal=PortalKey(NETWORK, hook.room), sender=sender, avatar=avatar)
        )
