"""Steps the encryption tests share."""

from __future__ import annotations

from typing import Any

from nio import RoomKeyRequest, ToDeviceError
from nio.crypto.sessions import OutboundGroupSession

from tests.e2ee.nio_user import NioUser

BOT = "@mimibot:localhost"


async def encrypted_management_room(user: NioUser) -> str:
    room = await user.create_encrypted_room(invite=[BOT], is_direct=True)
    await user.wait_for_body(room, "management room", sender=BOT)
    await user.wait_member(room, BOT)
    return room


async def command(user: NioUser, room: str, text: str, expect: str) -> str:
    await user.send_text(room, text)
    evt = await user.wait_for_body(room, expect, sender=BOT)
    return str(evt.source["content"]["body"])


async def was_encrypted(user: NioUser, room: str, event_id: str) -> bool:
    """What the homeserver holds: the ciphertext, not the message."""
    assert user.raw is not None
    return (await user.raw.get_event(room, event_id))["type"] == "m.room.encrypted"


def portal_alias(channel: str) -> str:
    """The Matrix alias of a test network channel (``#name``)."""
    return f"#testnet_=23{channel.removeprefix('#')}:localhost"


async def encrypted_portal(user: NioUser, channel: str) -> str:
    """Log in to the test network from an encrypted management room and join a portal.
    Each test its own ``channel``: aliases outlive the bridges of other tests in the session."""
    mgmt = await encrypted_management_room(user)
    await command(user, mgmt, "login testnet alice-remote", "Logged in")
    await command(user, mgmt, f"join testnet {channel}", "Invited you")
    return await user.join(portal_alias(channel))


async def unshared_ciphertext(user: NioUser, room: str, body: str) -> tuple[Any, dict[str, Any]]:
    """Encrypt with a fresh group session whose key nobody got; the client's next message
    starts another session (shared as usual). Returned: a copy of the session from before
    the encryption, whose key (sharing it exports the current index) decrypts the message."""
    unused, payloads = await unshared_ciphertexts(user, room, [body])
    return unused, payloads[0]


async def unshared_ciphertexts(
    user: NioUser, room: str, bodies: list[str]
) -> tuple[Any, list[dict[str, Any]]]:
    """:func:`unshared_ciphertext` for several messages, all in the one unshared session."""
    olm: Any = user.client.olm
    await user.client.joined_members(room)  # nio encrypts only for a room it knows in full
    user.client.invalidate_outbound_session(room)
    olm.create_outbound_group_session(room)
    session = olm.outbound_group_sessions[room]
    unused = OutboundGroupSession.from_pickle(session.pickle("copy"), "copy")
    session.shared = True  # lets the client encrypt with it
    payloads = []
    for body in bodies:
        content = {"msgtype": "m.text", "body": body}
        payloads.append(user.client.encrypt(room, "m.room.message", content)[1])
    olm.outbound_group_sessions.pop(room)
    return unused, payloads


async def forward_key(user: NioUser, room: str, session_id: str, to: str, device_id: str) -> None:
    """Forward the user's own room key ``session_id`` to another user's device, over the
    Olm session her client has with it (matrix-nio forwards keys only to its user's own
    devices by itself)."""
    olm: Any = user.client.olm
    own_key = olm.account.identity_keys["curve25519"]
    group_session = olm.inbound_group_store.get(room, own_key, session_id)
    assert group_session is not None, "the session is not the user's own"
    device = olm.device_store[to][device_id]
    session = olm.session_store.get(device.curve25519)
    assert session is not None, f"no Olm session with {to}/{device_id}"
    message = olm._encrypt_forwarding_key(room, group_session, session, device)
    resp = await user.client.to_device(message)
    assert not isinstance(resp, ToDeviceError), resp


def key_requests(user: NioUser) -> list[RoomKeyRequest]:
    """The room key requests the user's client receives from then on (matrix-nio handles
    them without telling its application, and ignores other users')."""
    olm: Any = user.client.olm
    seen: list[RoomKeyRequest] = []
    handle = olm._handle_key_requests

    def record(event: Any) -> None:
        if isinstance(event, RoomKeyRequest):
            seen.append(event)
        handle(event)

    olm._handle_key_requests = record
    return seen


def accept_forwarded_keys(user: NioUser, sender: str) -> None:
    """Let the user's client take the room keys it asked ``sender`` for (matrix-nio takes
    forwarded keys only from its user's own verified devices)."""
    olm: Any = user.client.olm
    check = olm._should_accept_forward

    def accept(from_user: str, sender_key: str, event: Any) -> bool:
        if from_user == sender and event.session_id in olm.outgoing_key_requests:
            return True
        return bool(check(from_user, sender_key, event))

    olm._should_accept_forward = accept
