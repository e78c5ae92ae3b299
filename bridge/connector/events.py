"""The message model and the events that cross the connector boundary.

The model carries what the MIMI content format carries: a stable id per message on each side
(``RemoteMessage.id`` / the Matrix event id), the reply target (``inReplyTo``), the replaced
message for edits and deletions (``replaces``), reactions, the thread (``topicId``), and
attachments (``ExternalPart``). Remote events flow from connectors into the core through
``BridgeAPI.emit``; Matrix events flow from the core into a connector's ``NetworkClient``.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from .ids import GhostKey, PortalKey


def now_ms() -> int:
    return int(time.time() * 1000)


class MessageKind(enum.StrEnum):
    TEXT = "text"
    EMOTE = "emote"  # /me, CTCP ACTION, m.emote
    NOTICE = "notice"  # automated text: IRC NOTICE, m.notice


@dataclass(slots=True)
class Attachment:
    """A file that travels with a message. Exactly one of ``data`` and ``url`` is normally
    set: connectors that receive bytes set ``data``; networks that pass links set ``url``.
    From Matrix, the core fills ``data`` (downloaded with authenticated media) and ``url``
    (a public link to the content repository, for networks that can only carry links)."""

    filename: str
    mimetype: str = "application/octet-stream"
    data: bytes | None = None
    url: str | None = None
    size: int | None = None
    width: int | None = None
    height: int | None = None
    mxc: str | None = None  # set by the core for Matrix-originated media

    @property
    def kind(self) -> str:
        major = self.mimetype.split("/", 1)[0]
        return major if major in ("image", "video", "audio") else "file"


@dataclass(slots=True)
class MessageContent:
    """A message body: plain text always, HTML when the sender formatted it.

    ``html`` is Matrix-flavoured HTML (``org.matrix.custom.html``). Connectors that
    receive a formatted remote message convert it to this HTML; the core sanitizes it before
    it reaches Matrix, so a connector can never inject markup.
    """

    text: str
    html: str | None = None
    kind: MessageKind = MessageKind.TEXT
    attachments: list[Attachment] = field(default_factory=list)
    # From Matrix: the Matrix user ids mentioned. From a network: remote user ids of mentioned
    # remote users, or the Matrix user id (``@user:server``) of a mentioned puppet's owner; the
    # core turns them into ``m.mentions``.
    mentions: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sent a remote event. ``remote_id`` is the stable account id (an IRC nick on that
    network, a bare JID, an address); ``display_name`` is the mutable handle."""

    remote_id: str
    display_name: str | None = None
    # The sender is a Matrix user's own puppet or logged-in account (``matrix_user``).
    is_from_me: bool = False
    # The Matrix user the puppet belongs to, when ``is_from_me``.
    matrix_user: str | None = None
    # With ``is_from_me``: the event was sent from another client of the user's account (their
    # phone, a desktop client), not by the bridge. The connector decides, from what it knows of
    # its own sends (pending ids, origin-ids, the network's own-message flags); the core drops
    # an ``is_from_me`` event without it as the echo of what the bridge sent, and shows one
    # with it in the portal as the user's (see docs/connectors.md, "The user's other clients").
    from_other_client: bool = False


# --- remote -> Matrix -------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class RemoteEvent:
    portal: PortalKey
    sender: Sender
    timestamp: int = field(default_factory=now_ms)


@dataclass(slots=True, kw_only=True)
class RemoteMessage(RemoteEvent):
    """A new message. ``id`` is stable: the same remote message always gets the same id, so a
    retry never doubles it in Matrix."""

    id: str
    content: MessageContent
    reply_to: str | None = None  # remote id of the message replied to
    thread_root: str | None = None  # remote id of the thread's first message
    #: True when the connector made ``id`` up on receipt (the network gives the message none):
    #: no earlier delivery can have carried it, so the core skips its already-bridged lookup
    #: (one database trip per message). Events that the scale-out stream may redeliver are
    #: looked up regardless.
    fresh_id: bool = False


@dataclass(slots=True, kw_only=True)
class RemoteEdit(RemoteEvent):
    target_id: str  # remote id of the ORIGINAL message (MIMI ``replaces``)
    content: MessageContent
    id: str | None = None  # the edit's own remote id, where the network has one


@dataclass(slots=True, kw_only=True)
class RemoteRedaction(RemoteEvent):
    target_id: str  # a message or a reaction id
    reason: str | None = None


@dataclass(slots=True, kw_only=True)
class RemoteReaction(RemoteEvent):
    target_id: str
    key: str  # the emoji
    id: str | None = None


@dataclass(slots=True, kw_only=True)
class RemoteReactionRemove(RemoteEvent):
    target_id: str
    key: str


class Membership(enum.StrEnum):
    JOIN = "join"
    LEAVE = "leave"
    INVITE = "invite"
    KICK = "kick"
    BAN = "ban"
    UNBAN = "unban"


@dataclass(slots=True, kw_only=True)
class RemoteMembership(RemoteEvent):
    """``sender`` joins or leaves; for kick, ban and invite, ``target`` is acted on by
    ``sender``."""

    membership: Membership
    target: Sender | None = None
    reason: str | None = None


@dataclass(slots=True, kw_only=True)
class RemoteTyping(RemoteEvent):
    typing: bool
    timeout_ms: int = 30_000


@dataclass(slots=True, kw_only=True)
class RemoteReceipt(RemoteEvent):
    target_id: str  # last message read


@dataclass(slots=True)
class ChatMember:
    sender: Sender
    power_level: int | None = None  # None: leave unchanged


@dataclass(slots=True, kw_only=True)
class RemoteChatInfo(RemoteEvent):
    """Name, topic, avatar or member list of a conversation changed (``None``: unchanged)."""

    name: str | None = None
    topic: str | None = None
    avatar: Attachment | None = None
    members: list[ChatMember] | None = None  # a full snapshot when not None


@dataclass(slots=True, kw_only=True)
class RemoteAccess(RemoteEvent):
    """Who may join, post and find a conversation (``None``: unchanged): invite only (IRC
    +i), the power level posting needs (IRC +m: voice's), listed in the room directory
    (never for secret, private or keyed channels)."""

    invite_only: bool | None = None
    post_level: int | None = None
    listed: bool | None = None


@dataclass(slots=True, kw_only=True)
class RemoteProfile(RemoteEvent):
    """A remote user's display name or avatar changed (network-wide, e.g. an IRC NICK).
    ``new_remote_id`` is set when the user's id itself changed."""

    display_name: str | None = None
    avatar: Attachment | None = None
    avatar_removed: bool = False  # the remote user cleared their picture
    new_remote_id: str | None = None


@dataclass(slots=True, kw_only=True)
class RemotePresence(RemoteEvent):
    presence: str  # "online" | "unavailable" | "offline"
    status: str | None = None


# --- Matrix -> remote ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MatrixSender:
    user_id: str
    display_name: str
    # True when a bot/relay client speaks for this user; the connector formats accordingly.
    relayed: bool = False


@dataclass(frozen=True, slots=True)
class MessageRef:
    """A message as the connector knows it: its remote id and who sent it remotely."""

    remote_id: str
    sender_remote_id: str | None
    text: str | None = None  # body, for networks that quote replies as text
    timestamp: int | None = None
    # Set when the message came from Matrix: whose it was (their puppet's remote id is the
    # connector's to know).
    sender_matrix_user: str | None = None


@dataclass(slots=True, kw_only=True)
class MatrixEvent:
    portal: PortalKey
    sender: MatrixSender
    event_id: str
    timestamp: int = field(default_factory=now_ms)


@dataclass(slots=True, kw_only=True)
class MatrixMessage(MatrixEvent):
    content: MessageContent
    reply_to: MessageRef | None = None
    thread_root: MessageRef | None = None


@dataclass(slots=True, kw_only=True)
class MatrixEdit(MatrixEvent):
    target: MessageRef
    content: MessageContent
    original_text: str | None = None  # the text being replaced, for diff-style edits


@dataclass(slots=True, kw_only=True)
class MatrixRedaction(MatrixEvent):
    target: MessageRef
    reason: str | None = None


@dataclass(slots=True, kw_only=True)
class MatrixReaction(MatrixEvent):
    target: MessageRef
    key: str


@dataclass(slots=True, kw_only=True)
class MatrixReactionRemove(MatrixEvent):
    target: MessageRef
    key: str
    reaction_remote_id: str


@dataclass(slots=True, kw_only=True)
class MatrixTyping(MatrixEvent):
    typing: bool


@dataclass(slots=True, kw_only=True)
class MatrixReceipt(MatrixEvent):
    target: MessageRef


@dataclass(slots=True, kw_only=True)
class MatrixMembership(MatrixEvent):
    """A Matrix membership change in a portal. ``target`` is a ghost's key when a Matrix user
    acts on a remote user (kick, ban, invite), else None (the sender joins or leaves)."""

    membership: Membership
    target: GhostKey | None = None
    target_matrix_user: str | None = None
    reason: str | None = None


@dataclass(slots=True, kw_only=True)
class MatrixProfile(MatrixEvent):
    """A puppeted Matrix user changed their display name or avatar (seen in a portal's member
    event, so once per portal: per-room nicknames differ). ``display_name`` is None when only
    the avatar changed; ``avatar`` is the new picture (downloaded by the core) or None when it
    did not change; ``avatar_removed`` says the user cleared it."""

    display_name: str | None = None
    previous_display_name: str | None = None
    avatar: Attachment | None = None
    avatar_removed: bool = False


@dataclass(slots=True, kw_only=True)
class MatrixPowerLevel(MatrixEvent):
    """A Matrix user changed a portal member's power level (``m.room.power_levels``): one
    event per member whose level changed. ``target`` is a ghost's key, or None when the member
    is a Matrix user (``target_matrix_user``, whose puppet the connector knows). The
    connector maps levels to its own ranks (Matrix's customary 50 is a moderator, 100 an
    administrator)."""

    level: int
    previous: int
    target: GhostKey | None = None
    target_matrix_user: str | None = None


@dataclass(slots=True, kw_only=True)
class MatrixRoomMeta(MatrixEvent):
    """``m.room.name`` / ``m.room.topic`` / ``m.room.avatar`` changed in a portal."""

    name: str | None = None
    topic: str | None = None
    avatar: Attachment | None = None


@dataclass(slots=True, kw_only=True)
class MatrixAccess(MatrixEvent):
    """A portal's join rule changed: ``invite_only`` when only invited users may join."""

    invite_only: bool


@dataclass(frozen=True, slots=True)
class SentMessage:
    """A connector's answer to a Matrix message: the remote id it got, so that later edits,
    replies, reactions and redactions find it."""

    remote_id: str
    timestamp: int | None = None
