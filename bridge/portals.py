"""Portal rooms and ghosts on the Matrix side: creating rooms for remote conversations,
registering ghosts and keeping their names, and the MSC2346 bridge-info state."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .connector import ChatInfo, PortalKey
from .connector.capabilities import Backfilling
from .db import Ghost, Portal
from .matrix.homeserver import MatrixError

if TYPE_CHECKING:
    from .bridge import Bridge

BRIDGE_STATE_TYPES = ("m.bridge", "uk.half-shot.bridge")
# The room encryption of portals created encrypted (bridge.encryption.default).
MEGOLM = {"algorithm": "m.megolm.v1.aes-sha2"}


class PortalManager:
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.hs = bridge.hs
        self._locks: dict[PortalKey, asyncio.Lock] = {}
        self._ghost_locks: dict[tuple[str, str], asyncio.Lock] = {}

    def lock(self, key: PortalKey) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    # --- ghosts ----------------------------------------------------------------------

    async def ghost(self, network: str, remote_id: str, display_name: str | None = None) -> str:
        """The ghost's user id, registered, with its display name up to date."""
        user_id = self.bridge.ghost_user_id(network, remote_id)
        lock = self._ghost_locks.setdefault((network, remote_id), asyncio.Lock())
        async with lock:
            row = await self.bridge.ghosts.get(network, remote_id)
            wanted = display_name or (row.display_name if row else None) or remote_id
            if row is None or row.display_name != wanted or row.user_id != user_id:
                await self.hs.ensure_registered(user_id)
                await self.hs.set_displayname(user_id, wanted)
                await self.bridge.ghosts.save(Ghost(network, remote_id, user_id, wanted))
            else:
                await self.hs.ensure_registered(user_id)
        return user_id

    # --- rooms -----------------------------------------------------------------------

    def bridge_info(self, portal: Portal) -> dict[str, Any]:
        network, ns = self.bridge.network_of(portal.key.network)
        info: dict[str, Any] = {
            "bridgebot": self.bridge.cfg.bot_mxid,
            "protocol": {"id": network.name, "displayname": network.display_name},
            "network": {"id": ns.network, "displayname": ns.description},
            "channel": {"id": portal.key.remote_id, "displayname": portal.name or ""},
            "com.github.mimi-bridge.decrypted_at_bridge": True,
        }
        return info

    def state_key(self, portal: Portal) -> str:
        k = portal.key
        return f"mimi-bridge/{k.network}/{k.remote_id}"

    async def set_bridge_info(self, portal: Portal) -> None:
        if not portal.room_id:
            return
        content = self.bridge_info(portal)
        for t in BRIDGE_STATE_TYPES:
            await self.hs.send_state(portal.room_id, t, content, self.state_key(portal))

    async def clear_bridge_info(self, portal: Portal) -> None:
        if not portal.room_id:
            return
        for t in BRIDGE_STATE_TYPES:
            try:
                await self.hs.send_state(portal.room_id, t, {}, self.state_key(portal))
            except MatrixError as e:
                self.bridge.log.warning("could not clear %s in %s: %s", t, portal.room_id, e)

    async def create_room(
        self,
        key: PortalKey,
        info: ChatInfo,
        *,
        invite: list[str] | None = None,
        alias_localpart: str | None = None,
    ) -> Portal:
        """Create the Matrix room for a remote conversation (idempotent per key)."""
        async with self.lock(key):
            existing = await self.bridge.portal_store.get(key)
            if existing and existing.room_id:
                for uid in invite or []:
                    await self.hs.invite(existing.room_id, uid)
                return existing
            portal = Portal(
                key=key,
                name=info.name,
                topic=info.topic,
                is_direct=info.is_direct,
                relay=info.relay_allowed,
            )
            body: dict[str, Any] = {
                "visibility": "private",
                "preset": "private_chat" if info.is_direct else "public_chat",
                "invite": list(invite or []),
                "is_direct": info.is_direct,
                "creation_content": {"m.federate": True},
                # The bot creates the room, so it holds the creator's power (room v12 forbids
                # naming it in this override).
                "power_level_content_override": {
                    "events": {"m.bridge": 100, "uk.half-shot.bridge": 100},
                },
                "initial_state": [
                    {
                        "type": t,
                        "state_key": self.state_key(portal),
                        "content": self.bridge_info(portal),
                    }
                    for t in BRIDGE_STATE_TYPES
                ],
            }
            if info.name and not info.is_direct:
                body["name"] = info.name
            topic = info.topic or ""
            if not info.is_direct:
                note = "Bridged by mimi-bridge: messages are decrypted at the bridge."
                body["topic"] = f"{topic}\n{note}" if topic else note
            elif topic:
                body["topic"] = topic
            enc = self.bridge.cfg.encryption
            encrypted = (enc.default or enc.require) and self.bridge.crypto is not None
            if encrypted:
                body["initial_state"].append(
                    {"type": "m.room.encryption", "state_key": "", "content": MEGOLM}
                )
            portal.room_id = await self.hs.create_room(body)
            if encrypted and self.bridge.crypto is not None:
                # Known at once: the bridge may send before the state event's echo arrives.
                await self.bridge.crypto.note_state(
                    {"type": "m.room.encryption", "room_id": portal.room_id, "content": MEGOLM}
                )
            if alias_localpart and not info.is_direct:
                # Published once the room is complete: Synapse publishes an alias given to
                # createRoom before the room's join rules, and refuses whoever joins through
                # it in between (a user joining while a remote message opens the portal).
                alias = f"#{alias_localpart}:{self.bridge.cfg.domain}"
                try:
                    await self.hs.create_alias(alias, portal.room_id)
                    await self.hs.send_state(
                        portal.room_id, "m.room.canonical_alias", {"alias": alias}
                    )
                except MatrixError as e:
                    if e.status != 409 and e.errcode != "M_ROOM_IN_USE":
                        raise
                    # The alias already points at a room (e.g. after losing the database).
                    room_id = await self.hs.resolve_alias(alias)
                    if room_id is None:
                        raise
                    await self.hs.leave(portal.room_id)
                    portal.room_id = await self.hs.join(room_id)
                    for uid in invite or []:
                        await self.hs.invite(room_id, uid)
            await self.bridge.portal_store.save(portal)
        connector = self.bridge.connector_of(key.network)
        await connector.portal_opened(key)
        await self.backfill(key, connector)
        for remote_user in info.members:
            try:
                ghost = await self.ghost(key.network, remote_user)
                assert portal.room_id
                await self.hs.ensure_joined(portal.room_id, ghost)
            except MatrixError as e:
                self.bridge.log.warning("ghost %s could not join: %s", remote_user, e)
        return portal

    async def backfill(self, key: PortalKey, connector: Any) -> None:
        """Fill a new portal with recent history, in the portal's ordered queue, before
        anything queued after it (ids deduplicate whatever arrives twice)."""
        limit = self.bridge.cfg.backfill_limit
        if limit <= 0 or not isinstance(connector, Backfilling):
            return
        try:
            history = await connector.fetch_history(key, limit)
        except Exception as e:
            self.bridge.log.warning("no history for %s: %s", key, e)
            return
        if not self.bridge.queues.in_worker(("remote", key)):
            for msg in history[-limit:]:
                await self.bridge.emit(msg)
            return
        # A remote message is opening this portal from inside its queue: queued history
        # would land after that message, so the history goes in now.
        for msg in history[-limit:]:
            await self.bridge.remote_handler.handle(msg)

    async def open_portal(
        self, key: PortalKey, user_id: str | None, invite_user: bool
    ) -> Portal | None:
        """Resolve a remote conversation through its connector and create its room."""
        existing = await self.bridge.portal_store.get(key)
        if existing and existing.room_id:
            if invite_user and user_id:
                await self.hs.invite(existing.room_id, user_id)
            return existing
        connector = self.bridge.connector_of(key.network)
        user = await self.bridge.matrix_user(user_id) if user_id else None
        info = await connector.resolve_portal(key, user)
        if info is None:
            return None
        _, ns = self.bridge.network_of(key.network)
        alias_lp = None
        if not info.is_direct:
            alias_lp = ns.prefix + connector.alias_localpart(key.network, key.remote_id)
        return await self.create_room(
            key,
            info,
            invite=[user_id] if invite_user and user_id else [],
            alias_localpart=alias_lp,
        )

    async def dm_receiver_user(self, key: PortalKey) -> str | None:
        """The Matrix user a private portal belongs to."""
        if not key.receiver:
            return None
        if key.receiver.startswith("@"):
            return key.receiver
        connector = self.bridge.connector_of(key.network)
        for login in await self.bridge.users.logins(network=connector.name):
            if login.login_id == key.receiver:
                return login.user_id
        return None
