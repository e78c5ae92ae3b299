"""Delta Chat identifiers, and how the bridge names portals, ghosts and aliases with them.

* A contact's address (lower case) is the remote user id: ghost ``@deltachat_<address>``.
* A message's Message-ID (``rfc724_mid``, the same in every member's core) is its remote id
  (:func:`connectors.deltachat.messages.message_id`).
* A DM is ``PortalKey("deltachat", <contact address>, receiver=<Matrix user id>)``.
* A group is ``PortalKey("deltachat", <handle>)``: ``g.<grpid>`` for groups the bridge found or
  created, or the invite link a Matrix user joined with; ``deltachat_group`` maps handles to
  the group id every core shares, and the group's alias is always ``#deltachat_g.<grpid>``.
* Contact, chat and message ids up to :data:`LAST_SPECIAL_ID` are the core's own (the account
  itself, info messages, the archive...), never a person or a conversation.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from bridge.connector import escape_localpart, unescape_localpart

from .config import valid_address

NETWORK = "deltachat"
SELF = 1  # the core's contact id for the account itself
LAST_SPECIAL_ID = 9


def is_special(core_id: int) -> bool:
    """A contact, chat or message id the core reserves for itself."""
    return core_id <= LAST_SPECIAL_ID


def grpid_from_link(link: str) -> str | None:
    """The group id (``x=``) of a Delta Chat group invite link."""
    _, _, fragment = link.partition("#")
    params = parse_qs(fragment.partition("&")[2] if "&" in fragment else "")
    values = params.get("x")
    return values[0] if values else None


def is_invite_link(value: str) -> bool:
    low = value.lower()
    return low.startswith("https://i.delta.chat/#") or low.startswith("openpgp4fpr:")


def group_handle(grpid: str) -> str:
    return f"g.{grpid}"


def group_alias_localpart(grpid: str) -> str:
    """The alias localpart (without the namespace prefix) of a group's portal."""
    return escape_localpart(group_handle(grpid))


def alias_localpart(handle: str, grpid_of: dict[str, str]) -> str:
    """The alias localpart of a group's portal (``grpid_of`` maps handles to group ids): always
    ``g.<grpid>`` once the group id is known, from the store or from an invite link."""
    grpid = grpid_of.get(handle)
    if grpid is None and is_invite_link(handle):
        grpid = grpid_from_link(handle)
    return group_alias_localpart(grpid) if grpid else escape_localpart(handle)


def parse_ghost_localpart(localpart: str) -> str | None:
    try:
        addr = unescape_localpart(localpart)
    except ValueError:
        return None
    return addr if valid_address(addr) else None


def parse_alias_localpart(localpart: str, handle_of: dict[str, str]) -> str | None:
    """The portal handle of an alias: ``g.<grpid>`` names the group's handle (``handle_of``
    maps group ids to handles), anything else is the handle itself."""
    try:
        value = unescape_localpart(localpart)
    except ValueError:
        return None
    if value.startswith("g."):
        return handle_of.get(value[2:], value)
    return value
