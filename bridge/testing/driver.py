"""What a connector's author writes for the kit: a :class:`Driver` for their network."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .kit import Kit

# What a connector may declare. Matrix -> network:
#   "formatting"  Matrix HTML reaches the network (the received entry has "html")
#   "replies"     a Matrix reply reaches the network as a reply ("reply_to" = remote id)
#   "edits", "reactions", "redactions"  the client has the capability; undeclared, the kit
#                 checks that the room gets the core's "cannot carry" notice instead
# Network -> Matrix (the driver implements the matching remote_* method):
#   "remote_formatting", "remote_replies", "remote_edits", "remote_reactions",
#   "remote_redactions"
#   "remote_large_messages"  the network can send a message over Matrix's 64 KiB event limit
#   "relay"       a Matrix user with no identity of their own is relayed (``relayed`` True)
#   "media"       a Matrix image reaches the network as a file (the received message has
#                 ``file``, its file name there)
#   "remote_media"  the driver's ``remote_image`` sends an image the room gets as m.image
#   "typing"      Matrix typing notifications reach the network (received entries of kind
#                 "typing" with ``typing`` True, then False when the user stops)
#   "receipts"    a Matrix read receipt reaches the network (kind "receipt", ``target`` the
#                 remote id of the message read)
#   "remote_typing"    the driver's ``remote_typing`` makes the remote user's ghost type
#   "remote_receipts"  the driver's ``remote_receipt`` gives a read receipt of the ghost
#   "membership"  a Matrix user joining and leaving the portal shows on the network (received
#                 entries of kind "membership" with ``membership`` "join"/"leave" and ``who``,
#                 the name the network shows, which contains the user's localpart)
CAPABILITIES = frozenset(
    {
        "formatting",
        "replies",
        "edits",
        "reactions",
        "redactions",
        "remote_formatting",
        "remote_replies",
        "remote_edits",
        "remote_reactions",
        "remote_redactions",
        "remote_large_messages",
        "relay",
        "media",
        "remote_media",
        "membership",
        "typing",
        "receipts",
        "remote_typing",
        "remote_receipts",
    }
)


class Driver(Protocol):
    """The remote side of a network, as the kit drives it.

    ``received`` lists what the network got from the bridge, oldest first, as dicts with
    ``kind`` ("message", "edit", "reaction", "redaction", "membership", "typing", "receipt")
    and, as the kind has them, ``text``, ``html``, ``id`` (the remote id the connector
    returned), ``target`` (remote id acted on or read), ``key`` (reaction), ``reply_to``,
    ``relayed``, ``file`` (the name of a file it carried, as the network names it),
    ``membership``, ``who`` and ``typing``.
    """

    connector: str  # the config section / connector name
    network: str  # Namespace.network of the instance under test
    prefix: str  # its Namespace.prefix (ghosts and aliases)
    capabilities: frozenset[str]

    def room_for(self, tag: str) -> str:
        """A remote room id, new for each scenario (``tag`` is unique), that opens a portal by
        alias and by ``join``. The scenario's room is ``kit.room``."""
        ...

    def config(self, workdir: Path) -> Mapping[str, Any]:
        """The connector's config section."""
        ...

    async def start(self, kit: Kit) -> None:
        """Start the remote side (a server, a receiver), before the bridge starts. A network
        whose rooms get their ids only when created (a Delta Chat group's invite link) creates
        the scenario's room here and sets ``kit.room``."""
        ...

    async def prepare_room(self, kit: Kit) -> None:
        """Before the portal of ``kit.room`` is opened by alias: where the bridge must first
        be a member to know the room (Delta Chat), get it in. Most networks: nothing."""
        ...

    async def stop(self) -> None: ...

    async def portal_ready(self, kit: Kit, room_id: str) -> None:
        """The Matrix room ``room_id`` is now the portal of ``kit.room`` (make the network
        listen, create a hook...). The kit's user there is a room admin."""
        ...

    async def remote_message(
        self, kit: Kit, text: str, html: str | None = None, reply_to: str | None = None
    ) -> str | None:
        """A remote user sends a message to ``kit.room``; its remote id when known."""
        ...

    async def remote_edit(self, kit: Kit, target: str, text: str) -> None: ...

    async def remote_reaction(self, kit: Kit, target: str, key: str) -> None: ...

    async def remote_redaction(self, kit: Kit, target: str) -> None: ...

    async def remote_image(self, kit: Kit, data: bytes, filename: str) -> str | None:
        """A remote user sends the PNG image ``data`` named ``filename``."""
        ...

    async def own_identity(self, kit: Kit) -> None:
        """Before the "typing" and "receipts" scenarios: give the kit's user an identity of
        their own on the network (a login), as typing and receipts are never relayed.
        Networks that puppet every Matrix user do nothing. Optional: a driver that declares
        neither capability need not have it."""
        ...

    async def remote_typing(self, kit: Kit, typing: bool) -> None:
        """The remote user starts (``True``) or stops typing in ``kit.room``."""
        ...

    async def remote_receipt(self, kit: Kit, target: str) -> None:
        """The remote user has read the message with the remote id ``target``."""
        ...

    def received(self, kit: Kit) -> list[dict[str, Any]]: ...
