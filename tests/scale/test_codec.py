"""Everything that crosses the bus comes back equal after encoding."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.connector import (
    Attachment,
    ChatInfo,
    ChatMember,
    ConnectionState,
    GhostInfo,
    GhostKey,
    Login,
    LoginResult,
    MatrixEdit,
    MatrixMembership,
    MatrixMessage,
    MatrixPowerLevel,
    MatrixProfile,
    MatrixReaction,
    MatrixReactionRemove,
    MatrixRoomMeta,
    MatrixSender,
    MatrixUser,
    Membership,
    MessageContent,
    MessageKind,
    MessageRef,
    PortalKey,
    RemoteChatInfo,
    RemoteConnection,
    RemoteEdit,
    RemoteMembership,
    RemoteMessage,
    RemotePresence,
    RemoteProfile,
    RemoteReaction,
    RemoteRedaction,
    Sender,
    SentMessage,
)
from bridge.scale.codec import CodecError, decode, encode

P = PortalKey("irc_libera", "#chan", "@u:example.org")
S = Sender("nick", "Nick", is_from_me=True, matrix_user="@u:example.org")
MS = MatrixSender("@u:example.org", "U", relayed=True)
REF = MessageRef("r1", "nick", "hello", 5, "@u:example.org")
FILE = Attachment("a.png", "image/png", data=b"\x89PNG\x00\xff", size=6, width=1, height=2)
CONTENT = MessageContent("hi", "<b>hi</b>", MessageKind.EMOTE, [FILE], ["@x:y"])

VALUES: list[Any] = [
    RemoteMessage(portal=P, sender=S, id="m1", content=CONTENT, reply_to="m0", thread_root="t"),
    RemoteEdit(portal=P, sender=S, target_id="m1", content=MessageContent("edited")),
    RemoteRedaction(portal=P, sender=S, target_id="m1", reason="spam"),
    RemoteReaction(portal=P, sender=S, target_id="m1", key="👍", id="x"),
    RemoteMembership(portal=P, sender=S, membership=Membership.KICK, target=Sender("b")),
    RemoteChatInfo(portal=P, sender=S, name="n", members=[ChatMember(Sender("a"), 50)]),
    RemoteProfile(portal=P, sender=S, display_name="d", avatar=FILE, new_remote_id="n2"),
    RemotePresence(portal=P, sender=S, presence="online", status="busy"),
    MatrixMessage(portal=P, sender=MS, event_id="$e", content=CONTENT, reply_to=REF),
    MatrixEdit(portal=P, sender=MS, event_id="$e", target=REF, content=CONTENT),
    MatrixReaction(portal=P, sender=MS, event_id="$e", target=REF, key="k"),
    MatrixReactionRemove(
        portal=P, sender=MS, event_id="$e", target=REF, key="k", reaction_remote_id="r"
    ),
    MatrixMembership(
        portal=P,
        sender=MS,
        event_id="$e",
        membership=Membership.BAN,
        target=GhostKey("irc_libera", "bob"),
    ),
    MatrixPowerLevel(
        portal=P, sender=MS, event_id="$e", level=50, previous=0, target_matrix_user="@v:w"
    ),
    MatrixProfile(portal=P, sender=MS, event_id="$e", avatar=FILE, avatar_removed=False),
    MatrixRoomMeta(portal=P, sender=MS, event_id="$e", topic="t"),
    SentMessage("r9", 12),
    ChatInfo(name="n", is_direct=True, members=["a", "b"]),
    GhostInfo("G", "mxc://x/y"),
    MatrixUser("@u:x", "U", "admin"),
    Login("irc", "l", "@u:x", {"password": "p", "nested": {"list": [1, 2.5, None]}}),
    LoginResult("l", {"k": b"bytes"}, "r", "m"),
    RemoteConnection("irc", ConnectionState.FAILED),
    [P, ("irc", "nick")],
    {"x": [None, True, 3]},
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_round_trip(value: Any) -> None:
    assert decode(encode(value)) == value


def test_types_come_back_as_they_went() -> None:
    msg = decode(encode(VALUES[0]))
    assert isinstance(msg, RemoteMessage) and isinstance(msg.portal, PortalKey)
    assert msg.content.kind is MessageKind.EMOTE
    assert msg.content.attachments[0].data == b"\x89PNG\x00\xff"


def test_only_contract_types_are_built() -> None:
    with pytest.raises(CodecError):
        decode(b'{"$t": "Popen", "f": {"args": ["sh"]}}')
    with pytest.raises(CodecError):
        encode(object())
    with pytest.raises(CodecError):
        decode(b'{"$t": "PortalKey", "f": {"nope": 1}}')
