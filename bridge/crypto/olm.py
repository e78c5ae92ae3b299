""":class:`RoomCrypto` on mautrix's ``OlmMachine`` (libolm through python-olm), with its crypto
store in the bridge's own database (SQLite or PostgreSQL, through ``mautrix.util.async_db``).

Appservice push mode: the bot's device is created by the appservice (MSC4190), and what a
syncing client would read from ``/sync`` (to-device messages, device lists, one-time-key
counts) arrives in transactions (MSC2409, MSC3202). Only the bot has a device: ghosts'
messages are encrypted by it, and sent as the ghost."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections import defaultdict
from collections.abc import Callable
from typing import Any, cast

import olm
from mautrix.api import Method, Path
from mautrix.client import Client
from mautrix.crypto import OlmMachine, PgCryptoStore, StateStore
from mautrix.crypto.attachments import decrypt_attachment, encrypt_attachment
from mautrix.crypto.key_share import RejectKeyShare
from mautrix.errors import (
    CryptoError,
    DecryptionError,
    DuplicateMessageIndex,
    EncryptionError,
    GroupSessionWithheldError,
    MatrixRequestError,
    SessionNotFound,
    VerificationError,
)
from mautrix.types import (
    JSON,
    ASToDeviceEvent,
    DecryptedOlmEvent,
    DeviceID,
    DeviceIdentity,
    DeviceLists,
    DeviceOTKCount,
    EncryptedEvent,
    EncryptedMegolmEventContent,
    EventType,
    ForwardedRoomKeyEventContent,
    IdentityKey,
    RequestedKeyInfo,
    RoomEncryptionStateEventContent,
    RoomID,
    RoomKeyWithheldCode,
    SerializerError,
    SessionID,
    TrustState,
    UserID,
)
from mautrix.util.async_db import Database
from mautrix.util.logging import TraceLogger

from ..credentials import CredentialBox, CredentialError
from ..matrix.homeserver import Homeserver, MatrixError
from ..matrix.txn import TransactionExtras
from .base import DecryptionFailed, KeyMissing
from .cross_signing import cross_sign_bot
from .plaintext_store import PlaintextKeepingStore
from .store import CryptoSecrets, RoomEncryptionStore, WaitingEvents, upgrade_table

# A to-device message the bot sends its own device at start-up: its arrival in a transaction
# proves the homeserver pushes to-device messages (MSC2409) and key counts (MSC3202).
PROBE_TYPE = "org.mimi-bridge.crypto_probe"
PROBE_TIMEOUT_S = 30.0
# How long a transaction waits for the device to be ready before the homeserver is asked to
# retry it (it carries room keys that must not be dropped).
READY_TIMEOUT_S = 60.0
# The bridge's own record of the bot's device, kept apart from the crypto store.
DEVICE_SECRET = "device_id"
# How long a missing room key may be on its way before the sender's devices are asked for it.
REQUEST_AFTER_S = 3.0


class CryptoStartupError(Exception):
    """The bot's device cannot be set up; the message says what to fix."""


class _TraceAdapter(logging.LoggerAdapter[logging.Logger]):
    def trace(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.log(5, msg, *args, **kwargs)

    def silly(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.log(1, msg, *args, **kwargs)


class _TrustNoise(logging.Filter):
    """mautrix warns, at every message from a user without cross-signing keys, that it found
    none. The bridge does not act on trust levels: those lines are debug."""

    NOISE = ("Didn't find cross-signing key", "isn't cross-signed")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and any(n in str(record.msg) for n in self.NOISE):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def _quiet_trust(name: str) -> None:
    log = logging.getLogger(name)
    if not any(isinstance(f, _TrustNoise) for f in log.filters):
        log.addFilter(_TrustNoise())


def _trace_logger(name: str) -> Any:
    """mautrix logs at its own TRACE and SILLY levels; a logger made before mautrix set its
    logger class lacks those methods."""
    log = logging.getLogger(name)
    return log if isinstance(log, TraceLogger) else _TraceAdapter(log, {})


class _MachineState(StateStore):
    """What ``OlmMachine`` asks about rooms, answered from the bridge's own knowledge."""

    def __init__(self, rooms: RoomEncryptionStore, joined: Callable[[str, str], bool]) -> None:
        self.rooms = rooms
        self.joined = joined

    async def is_encrypted(self, room_id: RoomID) -> bool:
        return self.rooms.known(room_id) is True

    async def get_encryption_info(self, room_id: RoomID) -> RoomEncryptionStateEventContent | None:
        content = self.rooms.content(room_id)
        if content is None:
            return None
        info: RoomEncryptionStateEventContent = RoomEncryptionStateEventContent.deserialize(
            cast(JSON, content)
        )
        return info

    async def find_shared_rooms(self, user_id: UserID) -> list[RoomID]:
        return [RoomID(r) for r in self.rooms.rooms() if self.joined(r, user_id)]


class _Machine(OlmMachine):
    """An ``OlmMachine`` that takes a forwarded room key only when the bridge asked for it,
    from the user it asked, for the room and session key it asked about."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # session id -> (room, user asked, session's sender key), and how many events wait
        # for it (what is kept of a session goes when none does).
        self.asked: dict[str, tuple[str, str, str]] = {}
        self.askers: dict[str, int] = defaultdict(int)

    async def _receive_forwarded_room_key(self, evt: DecryptedOlmEvent) -> None:
        key = evt.content
        if not isinstance(key, ForwardedRoomKeyEventContent):
            return
        expected = self.asked.get(str(key.session_id))
        if (
            expected is None
            or expected[:2] != (str(key.room_id), str(evt.sender))
            or (expected[2] and expected[2] != str(key.sender_key))
        ):
            self.log.debug(f"Ignoring a room key {evt.sender} forwarded unasked")
            return
        await super()._receive_forwarded_room_key(evt)

    def waiting_for(self, session_id: str) -> None:
        self.askers[session_id] += 1

    def ask(self, session_id: str, room_id: str, user: str, sender_key: str) -> None:
        self.asked[session_id] = (room_id, user, sender_key)

    def done_asking(self, session_id: str) -> None:
        self.askers[session_id] -= 1
        if self.askers[session_id] <= 0:
            self.askers.pop(session_id, None)
            self.asked.pop(session_id, None)


class OlmCrypto:
    def __init__(
        self,
        db: Database,
        hs: Homeserver,
        credentials: CredentialBox,
        is_bridge_user: Callable[[str], bool],
        log: logging.Logger,
        device_name: str = "mimi-bridge",
    ) -> None:
        self.db = db
        self.hs = hs
        self.credentials = credentials
        self.is_bridge_user = is_bridge_user
        self.log = log
        self.device_name = device_name
        self.device_id = ""
        self.rooms = RoomEncryptionStore(db)
        self._waiting = WaitingEvents(db)
        self._ready = asyncio.Event()
        self._store: PlaintextKeepingStore | None = None
        self._machine: _Machine | None = None
        self._client: Client | None = None
        self._room_locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._probe_nonce = ""
        self._probe_seen = asyncio.Event()
        self._msc3202_seen = asyncio.Event()
        self._probe_task: asyncio.Task[None] | None = None

    @property
    def machine(self) -> _Machine:
        assert self._machine is not None, "OlmCrypto.start() first"
        return self._machine

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await upgrade_table.upgrade(self.db)
        await PgCryptoStore.upgrade_table.upgrade(self.db)
        await self.rooms.load()
        secrets_store = CryptoSecrets(self.db, self.credentials)
        try:
            pickle_key = await secrets_store.pickle_key()
        except CredentialError as e:
            raise CryptoStartupError(
                "the bot's encryption keys cannot be opened: was bridge.credentials_key changed?"
            ) from e
        bot = UserID(self.hs.bot_mxid)
        self._store = PlaintextKeepingStore(bot, pickle_key, self.db)
        self._client = Client(
            mxid=bot,
            base_url=self.hs.address,
            token=self.hs.as_token,
            client_session=self.hs.session,
            log=_trace_logger(self.log.name + ".http"),
        )
        self._client.api.as_user_id = bot
        stored = await self._store.get_device_id()
        lost = await self._lost_device(secrets_store, stored)
        if lost and stored:
            # The account does not hold the keys published for its device: it cannot use them.
            await self._store.delete()
            self._store = PlaintextKeepingStore(bot, pickle_key, self.db)
            stored = None
        device_id = stored or DeviceID("MIMI" + secrets.token_hex(5).upper())
        self._machine = _Machine(
            self._client,
            self._store,
            _MachineState(self.rooms, self.hs.is_joined),
            log=_trace_logger(self.log.name + ".olm"),
        )
        _quiet_trust(self.log.name + ".olm")
        self._machine.allow_key_share = self._allow_key_share
        try:
            # MSC4190: the appservice creates (or re-confirms) its bot's device itself.
            await self._client.create_device_msc4190(device_id, self.device_name)
        except MatrixRequestError as e:
            raise CryptoStartupError(
                f"the homeserver did not create the bot's device ({e}): does it support"
                " appservice device management (MSC4190; the registration from mimi-bridge -g"
                " asks for it with io.element.msc4190: true)?"
            ) from e
        self.device_id = device_id
        await self._machine.load()
        if not stored:
            await self._store.put_device_id(device_id)
        if await secrets_store.get(DEVICE_SECRET) != device_id:
            await secrets_store.put(DEVICE_SECRET, device_id)
        if lost:
            await self._replace_device(lost, device_id)
        account = self._machine.account
        if account is not None and account.shared and not await self._keys_published():
            # The device was deleted on the homeserver (and made anew just now): the same
            # keys are published again, so the rooms' members can encrypt for it again.
            self.log.warning("the bot's device keys were gone from the homeserver: publishing")
            account.shared = False
        await self._machine.share_keys()
        await cross_sign_bot(self._machine, secrets_store, bot, device_id, self.log)
        self._ready.set()
        self.log.info("end-to-bridge encryption on: bot device %s", device_id)
        self._probe_task = asyncio.create_task(self._probe())

    async def _lost_device(self, secrets_store: CryptoSecrets, stored: str | None) -> str:
        """The device whose keys the crypto store no longer holds, or "": the store was
        wiped or restored from a backup while the homeserver kept the device."""
        assert self._store is not None
        if not stored:
            # The bridge's own record of the device outlives mautrix's tables.
            return await secrets_store.get(DEVICE_SECRET) or ""
        account = await self._store.get_account()
        if account is None or not account.shared:
            return ""
        published = await self._published_keys(stored)
        if published is None:
            return ""  # deleted on the homeserver: the same keys are published again below
        ours = {
            f"curve25519:{stored}": account.identity_key,
            f"ed25519:{stored}": account.signing_key,
        }
        return "" if all(published.get(k) == v for k, v in ours.items()) else stored

    async def _published_keys(self, device_id: str) -> dict[str, str] | None:
        assert self._client is not None
        bot = UserID(self.hs.bot_mxid)
        resp = await self._client.query_keys({bot: [DeviceID(device_id)]})
        device = resp.device_keys.get(bot, {}).get(DeviceID(device_id))
        return None if device is None else {str(k): str(v) for k, v in device.keys.items()}

    async def _replace_device(self, old: str, new: str) -> None:
        """Delete the device whose keys were lost, so clients stop encrypting for it."""
        try:
            await self.hs.request(Method.DELETE, Path.v3.devices[old], {})
            gone = "was deleted from the homeserver"
        except MatrixError as e:
            gone = f"could not be deleted ({e}): delete it among the bot's sessions"
        self.log.warning(
            "the bot's encryption keys for device %s were lost (crypto store wiped or restored"
            " from an old backup): the bot now uses a new device, %s, and the old one %s;"
            " messages encrypted for the old device cannot be decrypted",
            old,
            new,
            gone,
        )

    async def _allow_key_share(self, device: DeviceIdentity, request: RequestedKeyInfo) -> bool:
        """A Matrix user's device (a new one, typically) asks for the key of a group session:
        forwarded when the bot made the session (what the bridge posted, never another
        user's messages), the user is in the room now, and the room shows its history to its
        members. Refusals are answered with ``m.room_key.withheld``."""
        machine = self.machine
        user, room = str(device.user_id), str(request.room_id)
        if user == self.hs.bot_mxid:
            return await machine.default_allow_key_share(device, request)
        if self.is_bridge_user(user):
            raise RejectKeyShare(f"Ignoring a key request from bridge user {user}")
        if device.trust == TrustState.BLACKLISTED:
            raise RejectKeyShare(
                f"Rejecting a key request from blacklisted device {user}/{device.device_id}",
                RoomKeyWithheldCode.BLACKLISTED,
                "This device is blacklisted",
            )
        session = await machine.crypto_store.get_group_session(request.room_id, request.session_id)
        account = machine.account
        if session is None or account is None or session.sender_key != account.identity_key:
            raise RejectKeyShare(
                f"Not forwarding session {request.session_id}: not the bridge's own",
                RoomKeyWithheldCode.UNAVAILABLE,
                "The bridge forwards only the keys of what it sent",
            )
        try:
            member = await self.hs.get_state(room, "m.room.member", user)
            history = await self.hs.get_state(room, "m.room.history_visibility")
        except MatrixError as e:
            raise RejectKeyShare(
                f"Not forwarding a key of {room}: {e}", RoomKeyWithheldCode.UNAVAILABLE
            ) from e
        if (member or {}).get("membership") != "join":
            raise RejectKeyShare(
                f"Not forwarding a key of {room} to {user}: not in the room",
                RoomKeyWithheldCode.UNAUTHORIZED,
                "You are not in the room",
            )
        if (history or {}).get("history_visibility", "shared") not in ("shared", "world_readable"):
            # Whether the user was in the room when the session was used is not known here.
            raise RejectKeyShare(
                f"Not forwarding a key of {room}: its history is for members of the time",
                RoomKeyWithheldCode.UNAUTHORIZED,
                "The room's history is visible only to who was a member at the time",
            )
        self.log.info(
            "forwarding the key of session %s in %s to %s/%s",
            request.session_id,
            room,
            user,
            device.device_id,
        )
        return True

    async def _keys_published(self) -> bool:
        assert self._client is not None
        bot = UserID(self.hs.bot_mxid)
        resp = await self._client.query_keys([bot])
        return DeviceID(self.device_id) in resp.device_keys.get(bot, {})

    async def stop(self) -> None:
        if self._probe_task:
            self._probe_task.cancel()
            self._probe_task = None

    async def _probe(self) -> None:
        """Say once, at start-up, if the homeserver does not deliver what encryption needs."""
        self._probe_nonce = secrets.token_hex(8)
        try:
            await self.machine.client.send_to_device(
                EventType.find(PROBE_TYPE, EventType.Class.TO_DEVICE),
                {
                    UserID(self.hs.bot_mxid): {
                        DeviceID(self.device_id): {"nonce": self._probe_nonce}  # type: ignore[dict-item]
                    }
                },
            )
            await asyncio.wait_for(self._probe_seen.wait(), PROBE_TIMEOUT_S)
        except TimeoutError:
            pass
        except MatrixRequestError as e:
            self.log.warning("could not check the homeserver's encryption support: %s", e)
            return
        missing = []
        if not self._probe_seen.is_set():
            missing.append("to-device messages (msc2409_to_device_messages_enabled)")
        if not self._msc3202_seen.is_set():
            missing.append("device lists and key counts (msc3202_transaction_extensions)")
        if not missing:
            self.log.info("the homeserver delivers to-device messages and key counts")
        else:
            self.log.error(
                "encrypted rooms will not work: the homeserver does not deliver %s to the"
                " bridge; set them under experimental_features in homeserver.yaml",
                " nor ".join(missing),
            )

    async def _until_ready(self) -> None:
        """Transactions may come in before the device is set up: their events wait for it."""
        if self._ready.is_set():
            return
        try:
            await asyncio.wait_for(self._ready.wait(), READY_TIMEOUT_S)
        except TimeoutError as e:
            raise RuntimeError("the bot's encryption device is not set up") from e

    # --- transactions ---------------------------------------------------------------------

    async def handle_extras(self, extras: TransactionExtras) -> None:
        if extras.has_msc3202:
            self._msc3202_seen.set()
        if not extras:
            return
        await self._until_ready()  # failing, the homeserver sends the transaction again
        for raw in extras.to_device:
            await self._to_device(raw)
        if extras.devices_changed or extras.devices_left:
            lists = DeviceLists(
                changed=[UserID(u) for u in extras.devices_changed],
                left=[UserID(u) for u in extras.devices_left],
            )
            await self.machine.handle_device_lists(lists)
        counts = {
            UserID(user): {
                DeviceID(device): DeviceOTKCount.deserialize(cast(JSON, algos))
                for device, algos in devices.items()
                if user == self.hs.bot_mxid and device == self.device_id
            }
            for user, devices in extras.otk_counts.items()
        }
        counts = {u: d for u, d in counts.items() if d}
        if counts:
            await self.machine.handle_as_otk_counts(counts)

    async def _to_device(self, raw: dict[str, Any]) -> None:
        if raw.get("to_user_id") != self.hs.bot_mxid or raw.get("to_device_id") != self.device_id:
            self.log.debug("to-device %s for another device ignored", raw.get("type"))
            return
        if raw.get("type") == PROBE_TYPE:
            if (raw.get("content") or {}).get("nonce") == self._probe_nonce:
                self._probe_seen.set()
            return
        try:
            evt = cast(ASToDeviceEvent, ASToDeviceEvent.deserialize(cast(JSON, raw)))
        except SerializerError:
            self.log.warning(
                "malformed to-device %s from %s ignored", raw.get("type"), raw.get("sender")
            )
            return
        try:
            await self.machine.handle_as_to_device_event(evt)
        except (CryptoError, olm.OlmSessionError, olm.OlmAccountError) as e:
            # Bad or replayed (a retried transaction) message: nothing to keep. Other errors
            # (database, network) propagate, so the transaction is not acknowledged.
            self.log.warning("to-device %s from %s not usable: %s", evt.type, evt.sender, e)

    # --- room state -----------------------------------------------------------------------

    async def is_encrypted(self, room_id: str, as_user: str | None = None) -> bool:
        await self._until_ready()
        known = self.rooms.known(room_id)
        if known is not None:
            return known
        try:
            content = await self.hs.get_state(room_id, "m.room.encryption", as_user=as_user)
        except MatrixError as e:
            if e.errcode != "M_FORBIDDEN" and e.status != 403:
                raise  # unknown: sending in clear could leak into an encrypted room
            # Not in the room (yet): nothing can be sent or decrypted there; ask again later.
            self.log.debug("encryption state of %s not readable: %s", room_id, e)
            return False
        if content and content.get("algorithm"):
            await self.rooms.mark_encrypted(room_id, content)
            return True
        self.rooms.mark_plain(room_id)
        return False

    async def note_state(self, event: dict[str, Any]) -> None:
        await self._until_ready()
        etype, room_id = event.get("type"), event.get("room_id")
        content = event.get("content")
        if not isinstance(room_id, str) or not isinstance(content, dict):
            return
        if etype == "m.room.encryption" and content.get("algorithm"):
            before = self.rooms.content(room_id)
            await self.rooms.mark_encrypted(room_id, content)
            if before is not None and before != content and self._store is not None:
                # New settings (rotation period): the session made under the old ones ends;
                # mautrix reads the room's settings when it makes the next.
                self.log.debug("encryption settings of %s changed: new group session", room_id)
                await self._store.remove_outbound_group_session(RoomID(room_id))
        elif etype == "m.room.member":
            target = event.get("state_key")
            if target == self.hs.bot_mxid and content.get("membership") == "invite":
                # The invite's stripped state says whether the room is encrypted.
                for stripped in (event.get("unsigned") or {}).get("invite_room_state") or []:
                    c = stripped.get("content") if isinstance(stripped, dict) else None
                    if stripped.get("type") == "m.room.encryption" and isinstance(c, dict):
                        if c.get("algorithm"):
                            await self.rooms.mark_encrypted(room_id, c)
                return
            if not isinstance(target, str) or self.is_bridge_user(target):
                return  # ghosts have no devices: their coming and going changes no keys
            if self.rooms.known(room_id) is not True or self._store is None:
                return
            prev = ((event.get("unsigned") or {}).get("prev_content") or {}).get("membership")
            cur = content.get("membership")
            if prev == cur or (prev, cur) in (("invite", "join"), ("ban", "leave")):
                return
            # Someone left: they must not read what follows. Someone came: they get a new
            # session. Either way the next message starts one.
            self.log.debug("%s %s -> %s in %s: new group session", target, prev, cur, room_id)
            await self._store.remove_outbound_group_session(RoomID(room_id))

    # --- events ---------------------------------------------------------------------------

    async def decrypt(self, event: dict[str, Any]) -> dict[str, Any]:
        try:
            evt = EncryptedEvent.deserialize(cast(JSON, event))
        except (SerializerError, KeyError, ValueError, TypeError) as e:
            raise DecryptionFailed(
                "it is malformed", "your client sent something the bridge cannot read"
            ) from e
        try:
            await self._until_ready()
        except RuntimeError as e:
            raise DecryptionFailed(
                "its encryption is not set up", "send the message again in a minute"
            ) from e
        if not isinstance(evt.content, EncryptedMegolmEventContent):
            raise DecryptionFailed(
                "it uses an encryption the bridge does not know", "use a current Matrix client"
            )
        assert self._store is not None
        self._store.expect(evt.content.ciphertext)
        try:
            await self.machine.decrypt_megolm_event(evt)
            plaintext = self._store.take(evt.content.ciphertext)
        except SessionNotFound as e:
            raise KeyMissing(
                evt.room_id, str(e.session_id), evt.sender, str(evt.content.sender_key or "")
            ) from e
        except GroupSessionWithheldError as e:
            raise DecryptionFailed(
                "your client withheld its key from the bridge",
                "allow sending keys to unverified devices, or verify the bridge's device",
            ) from e
        except DuplicateMessageIndex as e:
            raise DecryptionFailed(
                "it reuses a key index (a replayed message)", "send the message again"
            ) from e
        except VerificationError as e:
            raise DecryptionFailed(
                "its key does not belong to your device", "check your devices' sessions"
            ) from e
        except DecryptionError as e:
            raise DecryptionFailed(f"decryption failed ({e})", "send the message again") from e
        finally:
            self._store.take(evt.content.ciphertext)
        if plaintext is None:
            # The same ciphertext decrypted twice at once: the other decryption took it.
            plaintext = await self._decrypt_again(evt)
        return self._plain(event, plaintext)

    async def _decrypt_again(self, evt: EncryptedEvent) -> str:
        assert self._store is not None
        content = evt.content
        assert isinstance(content, EncryptedMegolmEventContent)
        session = await self._store.get_group_session(evt.room_id, SessionID(content.session_id))
        if session is None:
            raise KeyMissing(
                evt.room_id, str(content.session_id), evt.sender, str(content.sender_key or "")
            )
        try:
            plaintext, _ = session.decrypt(content.ciphertext)
        except olm.OlmGroupSessionError as e:
            raise DecryptionFailed("decryption failed", "send the message again") from e
        return str(plaintext)

    def _plain(self, event: dict[str, Any], plaintext: str) -> dict[str, Any]:
        """The event as its sender wrote it (mautrix verified the sender and the message
        index; its parsed result drops fields, so the payload is read from the plaintext)."""
        try:
            payload = json.loads(plaintext)
        except ValueError as e:
            raise DecryptionFailed("decryption failed", "send the message again") from e
        inner = payload.get("content") if isinstance(payload, dict) else None
        etype = payload.get("type") if isinstance(payload, dict) else None
        if not isinstance(inner, dict) or not isinstance(etype, str):
            raise DecryptionFailed("its decrypted payload is malformed", "send it again")
        outer_rel = (event.get("content") or {}).get("m.relates_to")
        if isinstance(outer_rel, dict) and "m.relates_to" not in inner:
            inner["m.relates_to"] = outer_rel  # relations stay outside the ciphertext
        return {**event, "type": etype, "content": inner}

    async def wait_for_key(self, missing: KeyMissing, limit_s: float) -> bool:
        room, session = RoomID(missing.room_id), SessionID(missing.session_id)
        machine = self.machine
        sender = missing.sender
        asking = bool(sender) and not self.is_bridge_user(sender)
        request: asyncio.Task[None] | None = None
        if asking:
            machine.waiting_for(session)
            request = asyncio.create_task(self._request_key(missing))
        try:
            # One wait from the event's arrival: the events waiting for a key wake in the
            # order they came when it arrives, and are bridged in that order.
            return bool(await machine.wait_for_session(room, session, limit_s))
        finally:
            if request is not None:
                request.cancel()
            if asking:
                machine.done_asking(session)

    async def _request_key(self, missing: KeyMissing) -> None:
        """Ask the sender's devices for a key still missing a few seconds on (once for all
        the events waiting for it)."""
        await asyncio.sleep(REQUEST_AFTER_S)
        machine = self.machine
        room, session = RoomID(missing.room_id), SessionID(missing.session_id)
        if session in machine.asked or await machine.crypto_store.has_group_session(room, session):
            return
        machine.ask(session, room, missing.sender, missing.sender_key)
        try:
            # Sent to all the sender's devices; the answer comes as a forwarded room key,
            # which wakes the wait. Whom it reached is not waited on: no cancellation.
            await machine.request_room_key(
                room,
                IdentityKey(missing.sender_key),
                session,
                {UserID(missing.sender): [DeviceID("*")]},
                timeout=0,
            )
        except MatrixRequestError as e:
            self.log.warning("could not ask %s for a missing room key: %s", missing.sender, e)
            return
        self.log.info(
            "asked the devices of %s for the missing key of session %s in %s",
            missing.sender,
            session,
            room,
        )

    async def keep_waiting(self, event: dict[str, Any]) -> None:
        await self._until_ready()
        await self._waiting.keep(str(event.get("event_id", "")), event)

    async def done_waiting(self, event_id: str) -> None:
        await self._until_ready()
        await self._waiting.done(event_id)

    async def waiting(self) -> list[dict[str, Any]]:
        await self._until_ready()
        return await self._waiting.all()

    async def encrypt_file(self, data: bytes) -> tuple[bytes, dict[str, Any]]:
        # AES over a whole file: off the event loop.
        ciphertext, info = await asyncio.to_thread(encrypt_attachment, data)
        file: dict[str, Any] = info.serialize()
        file.pop("url", None)
        return ciphertext, file

    async def decrypt_file(self, data: bytes, file: dict[str, Any]) -> bytes:
        key, hashes, iv = file.get("key"), file.get("hashes"), file.get("iv")
        k = key.get("k") if isinstance(key, dict) else None
        digest = hashes.get("sha256") if isinstance(hashes, dict) else None
        if not (isinstance(k, str) and isinstance(digest, str) and isinstance(iv, str)):
            raise DecryptionFailed(
                "its decryption key is incomplete", "send the file again from a current client"
            )
        try:
            plain: bytes = await asyncio.to_thread(decrypt_attachment, data, k, digest, iv)
        except DecryptionError as e:
            raise DecryptionFailed(f"it does not decrypt ({e})", "send the file again") from e
        return plain

    async def encrypt(
        self, room_id: str, event_type: str, content: dict[str, Any], as_user: str | None = None
    ) -> dict[str, Any]:
        await self._until_ready()
        rid = RoomID(room_id)
        etype = EventType.find(event_type, EventType.Class.MESSAGE)
        async with self._room_locks[room_id]:
            try:
                encrypted = await self.machine.encrypt_megolm_event(rid, etype, content)
            except EncryptionError:
                # No session yet, or it expired or was dropped when members changed.
                users = await self._members(room_id, as_user)
                await self.machine.share_group_session(rid, [UserID(u) for u in users])
                encrypted = await self.machine.encrypt_megolm_event(rid, etype, content)
        out: dict[str, Any] = encrypted.serialize()
        return out

    async def _members(self, room_id: str, as_user: str | None) -> list[str]:
        """The Matrix users who get the room key: joined and invited, without ghosts."""
        resp = await self.hs.request(Method.GET, Path.v3.rooms[room_id].members, as_user=as_user)
        out = []
        for evt in resp.get("chunk") or []:
            user = evt.get("state_key")
            membership = (evt.get("content") or {}).get("membership")
            if isinstance(user, str) and membership in ("join", "invite"):
                if not self.is_bridge_user(user):
                    out.append(user)
        return out
