"""``bridge.encryption.require`` for the portals made before it was set: at start-up the bot
turns encryption on in each unencrypted portal where it may; a portal where it may not bridges
nothing in either direction, and its room is told so once, with what to do."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .db.portals import Portal
from .matrix.homeserver import MatrixError
from .metrics import NOT_ALLOWED, REMOTE_TO_MATRIX
from .portals import MEGOLM

if TYPE_CHECKING:
    from .bridge import Bridge

# Portal metadata: the room was told that nothing is bridged until it is encrypted.
TOLD = "plain_refused_told"
# Portals upgraded at once at start-up (each is two small requests).
PARALLEL = 8


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _level(levels: dict[str, Any], user: str) -> int:
    users = levels.get("users")
    default = _int(levels.get("users_default"), 0)
    return _int(users.get(user), default) if isinstance(users, dict) else default


def _needed(levels: dict[str, Any], event_type: str) -> int:
    events = levels.get("events")
    default = _int(levels.get("state_default"), 50)
    return _int(events.get(event_type), default) if isinstance(events, dict) else default


class EncryptionRequirement:
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.log = bridge.log.getChild("encryption")

    @property
    def on(self) -> bool:
        return self.bridge.cfg.encryption.require and self.bridge.crypto is not None

    def _speaker(self, portal: Portal) -> str | None:
        # DMs opened by inviting a ghost hold no bot: their ghost acts there.
        sender = portal.metadata.get("notice_sender")
        return sender if isinstance(sender, str) else None

    async def _encrypted(self, portal: Portal) -> bool:
        crypto = self.bridge.crypto
        assert crypto is not None and portal.room_id
        return await crypto.is_encrypted(portal.room_id, self._speaker(portal))

    async def at_start(self) -> None:
        """Before the connectors start: no remote event reaches a portal still unencrypted
        that the bot could have encrypted."""
        if not self.on:
            return
        portals = [p for p in await self.bridge.portal_store.all() if p.room_id]
        gate = asyncio.Semaphore(PARALLEL)
        results: list[bool | None] = []

        async def one(portal: Portal) -> None:
            async with gate:
                results.append(await self._upgrade(portal))

        await asyncio.gather(*(one(p) for p in portals))
        turned, refused = results.count(True), results.count(False)
        if turned or refused:
            self.log.info(
                "bridge.encryption.require: encryption turned on in %d portals; %d portals"
                " stay unencrypted (the bot may not turn it on there) and bridge nothing",
                turned,
                refused,
            )

    async def _upgrade(self, portal: Portal) -> bool | None:
        """True: encryption turned on now; False: refused; None: encrypted already."""
        assert portal.room_id
        try:
            if await self._encrypted(portal):
                return None
            await self.bridge.hs.send_state(
                portal.room_id, "m.room.encryption", MEGOLM, as_user=self._speaker(portal)
            )
        except MatrixError as e:
            self.log.warning("could not turn on encryption in %s: %s", portal.room_id, e)
            await self._tell_once(portal)
            return False
        crypto = self.bridge.crypto
        assert crypto is not None
        # Known at once: the state event's echo may come after the first remote message.
        await crypto.note_state(
            {"type": "m.room.encryption", "room_id": portal.room_id, "content": MEGOLM}
        )
        self.log.info("encryption turned on in %s (%s)", portal.room_id, portal.key.remote_id)
        return True

    async def levels_changed(self, portal: Portal, levels: dict[str, Any]) -> None:
        """The room's power levels changed: a portal left unencrypted where the bot may now
        turn encryption on gets it."""
        if not self.on or portal.room_id is None or await self._encrypted(portal):
            return
        speaker = self._speaker(portal) or self.bridge.cfg.bot_mxid
        if _level(levels, speaker) >= _needed(levels, "m.room.encryption"):
            await self._upgrade(portal)

    async def allows(self, portal: Portal, message: bool) -> bool:
        """Whether a remote event may be bridged into the portal's room; if not, the room
        hears why (once) and a ``message`` counts as failed."""
        if not self.on or portal.room_id is None or await self._encrypted(portal):
            return True
        if message:
            self.bridge.metrics.failed(portal.key.network, REMOTE_TO_MATRIX, NOT_ALLOWED)
        await self._tell_once(portal)
        return False

    async def _tell_once(self, portal: Portal) -> None:
        if portal.metadata.get(TOLD) or portal.room_id is None:
            return
        name = self.bridge.connector_of(portal.key.network).display_name
        await self.bridge.send_notice(
            portal.room_id,
            "This room is not encrypted, and this bridge requires encryption: nothing is"
            f" bridged between it and {name}, either way, until a room admin turns on"
            " encryption in the room's settings.",
        )
        portal.metadata[TOLD] = True
        await self.bridge.portal_store.save(portal)
